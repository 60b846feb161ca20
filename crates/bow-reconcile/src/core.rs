//! The core's state and its one entry point, [`Core::step`]: an observation in, effects out.
//! Requests (apply, rollback, restart) and what the driver saw at start are handled here;
//! each service's deploy is in `deploy.rs`, each instance's life in `slot.rs`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use bow_spec::{Service, Spec};

use crate::deploy::Converge;
use crate::effect::{Effect, EventKind, Timer};
use crate::model::{
    AssignmentSource, DeployStrategy, Desired, Endpoint, InstanceKey, InstanceView, Listed, Millis,
    Phase, ReleaseRecord, ReleaseStatus, ServiceProgress,
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
    shutting_down: bool,
    down: Option<Down>,
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

    fn observe(&mut self, observation: Observation) -> Result<(), Refused> {
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
            Observation::StopFinished { key, outcome } => {
                if let Some(retiring) = self.retiring.remove(&key) {
                    self.out.emit(
                        &key.service,
                        &key.to_string(),
                        EventKind::Stopped,
                        format!("{}: {outcome}", retiring.reason.label()),
                    );
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

    fn timer_fired(&mut self, timer: Timer) {
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
    fn with_slot(&mut self, key: &InstanceKey, change: impl FnOnce(&mut Slot, &mut Out)) {
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
    fn restore(
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

    fn stop_unwanted(&mut self, listed: Listed) {
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
    fn apply(&mut self, spec: Spec) {
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

    /// Opens a release for every service whose definition differs from its current (live
    /// or deploying) release, and points each service at its target release.
    fn open_releases(&mut self, spec: &Spec, revision: i64) {
        let mut progress = BTreeMap::new();
        for name in bow_spec::dependency_order(spec) {
            let definition = &spec.services[&name];
            let rows = self.releases.get(&name).cloned().unwrap_or_default();
            let current = rows
                .iter()
                .rev()
                .find(|r| matches!(r.status, ReleaseStatus::Live | ReleaseStatus::Deploying));
            if let Some(current) = current
                && &current.definition == definition
            {
                self.targets.insert(name.clone(), current.number);
                if current.status == ReleaseStatus::Deploying {
                    progress.insert(
                        name.clone(),
                        self.new_progress(&name, current.number, current.strategy),
                    );
                }
                continue;
            }
            // A deploy still under way whose instances already serve counts as the base.
            let serving = |number: i64| self.serves(&name, number);
            let live = rows
                .iter()
                .rev()
                .find(|r| {
                    r.status == ReleaseStatus::Live
                        || (r.status == ReleaseStatus::Deploying && serving(r.number))
                })
                .cloned();
            let number = self.record_release(&name, definition, live.as_ref(), revision, None);
            for interrupted in rows.iter().filter(|r| r.status == ReleaseStatus::Deploying) {
                let status = if self.serves(&name, interrupted.number) {
                    ReleaseStatus::Superseded
                } else {
                    ReleaseStatus::Failed
                };
                self.set_release_status(
                    &name,
                    interrupted.number,
                    status,
                    Some(format!("interrupted by release {number}")),
                );
            }
            let strategy = DeployStrategy::of(definition, live.as_ref().map(|l| &l.definition));
            self.targets.insert(name.clone(), number);
            progress.insert(name.clone(), self.new_progress(&name, number, strategy));
        }
        if !progress.is_empty() {
            for p in progress.values() {
                self.out.effects.push(Effect::Progress(p.clone()));
            }
            self.progress = progress;
            self.progress_revision = revision;
        }
    }

    /// Whether an instance of `release` of `service` is healthy.
    fn serves(&self, service: &str, release: i64) -> bool {
        self.services.get(service).is_some_and(|s| {
            s.slots
                .values()
                .any(|slot| slot.release == release && slot.health == crate::Health::Healthy)
        })
    }

    fn new_progress(
        &self,
        service: &str,
        release: i64,
        strategy: DeployStrategy,
    ) -> ServiceProgress {
        ServiceProgress {
            service: service.to_string(),
            release,
            strategy,
            phase: Phase::Waiting,
            detail: String::new(),
            started_at: self.out.now,
            finished_at: None,
            failure: None,
        }
    }

    /// Records a new release of `name` (numbered after the last); an in-place one is live at
    /// once.
    pub(crate) fn record_release(
        &mut self,
        name: &str,
        definition: &Service,
        live: Option<&ReleaseRecord>,
        revision: i64,
        note: Option<String>,
    ) -> i64 {
        let strategy = DeployStrategy::of(definition, live.map(|l| &l.definition));
        let changes = match live {
            None => "created".to_string(),
            Some(live) => {
                let mut fields: Vec<String> = bow_plan::service_fields(
                    &format!("services.{name}"),
                    &live.definition,
                    definition,
                )
                .into_iter()
                .map(|f| f.path.split('.').skip(2).collect::<Vec<_>>().join("."))
                .collect();
                fields.dedup();
                fields.join(", ")
            }
        };
        let in_place = strategy == DeployStrategy::InPlace;
        let rows = self.releases.entry(name.to_string()).or_default();
        let number = rows.last().map_or(0, |r| r.number) + 1;
        let record = ReleaseRecord {
            service: name.to_string(),
            number,
            revision,
            created_at: self.out.now,
            status: if in_place {
                ReleaseStatus::Live
            } else {
                ReleaseStatus::Deploying
            },
            strategy,
            changes,
            reason: note.unwrap_or_default(),
            definition: definition.clone(),
        };
        rows.push(record.clone());
        self.out
            .effects
            .push(Effect::RecordRelease(Box::new(record)));
        if in_place && let Some(live) = live {
            self.set_release_status(name, live.number, ReleaseStatus::Superseded, None);
        }
        number
    }

    pub(crate) fn set_release_status(
        &mut self,
        service: &str,
        number: i64,
        status: ReleaseStatus,
        reason: Option<String>,
    ) {
        if let Some(row) = self
            .releases
            .get_mut(service)
            .and_then(|rows| rows.iter_mut().find(|r| r.number == number))
        {
            row.status = status;
            if let Some(reason) = &reason {
                row.reason = reason.clone();
            }
        }
        self.out.effects.push(Effect::SetReleaseStatus {
            service: service.to_string(),
            number,
            status,
            reason,
        });
    }

    /// `bow rollback SERVICE [--to N]`: deploys release `to` (or the last good one before the
    /// live release) again, as a new release.
    fn rollback(&mut self, service: &str, to: Option<i64>) -> Result<(), Refused> {
        let spec = self
            .spec
            .clone()
            .ok_or_else(|| Refused("nothing is applied yet".into()))?;
        if !spec.services.contains_key(service) {
            return Err(no_service(&spec, service));
        }
        let releases = self.releases.get(service).cloned().unwrap_or_default();
        let live = releases
            .iter()
            .rev()
            .find(|r| matches!(r.status, ReleaseStatus::Live | ReleaseStatus::Deploying));
        let target = match to {
            Some(number) => releases.iter().find(|r| r.number == number).ok_or_else(|| {
                Refused(format!(
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
                    Refused(format!(
                        "{service} has no earlier good release to roll back to; `bow history {service}` lists its releases"
                    ))
                })?,
        };
        if live.is_some_and(|l| l.definition == target.definition) {
            return Err(Refused(format!(
                "{service} already runs what release {} ran",
                target.number
            )));
        }
        let mut spec = spec;
        spec.services
            .insert(service.to_string(), target.definition.clone());
        self.revision += 1;
        let revision = self.revision;
        self.out.effects.push(Effect::RecordRevision {
            revision,
            spec: Box::new(spec.clone()),
        });
        let live_row = releases
            .iter()
            .rev()
            .find(|r| r.status == ReleaseStatus::Live)
            .cloned();
        let number = self.record_release(
            service,
            &target.definition,
            live_row.as_ref(),
            revision,
            Some(format!("rollback to release {}", target.number)),
        );
        for interrupted in releases
            .iter()
            .filter(|r| r.status == ReleaseStatus::Deploying)
        {
            self.set_release_status(
                service,
                interrupted.number,
                ReleaseStatus::Failed,
                Some(format!("interrupted by release {number}")),
            );
        }
        self.out.emit(
            service,
            "",
            EventKind::Rollback,
            format!(
                "release {number}: back to what release {} ran",
                target.number
            ),
        );
        let strategy =
            DeployStrategy::of(&target.definition, live_row.as_ref().map(|l| &l.definition));
        let progress = self.new_progress(service, number, strategy);
        self.out.effects.push(Effect::Progress(progress.clone()));
        self.progress = BTreeMap::from([(service.to_string(), progress)]);
        self.progress_revision = revision;
        self.targets.insert(service.to_string(), number);
        self.spec = Some(spec);
        self.assign();
        if let Some(state) = self.services.get_mut(service) {
            state.converge = Converge::Waiting;
        }
        Ok(())
    }

    /// `bow restart SERVICE`: queues every instance; `drive_restart` takes them one by one.
    fn restart(&mut self, service: &str) -> Result<(), Refused> {
        let spec = self
            .spec
            .as_ref()
            .ok_or_else(|| Refused("nothing is applied yet".into()))?;
        if !spec.services.contains_key(service) {
            return Err(no_service(spec, service));
        }
        if let Some(state) = self.services.get_mut(service) {
            state.restart = Some(RestartRun {
                queue: state.slots.keys().copied().collect(),
                current: None,
                expired: false,
                done: Vec::new(),
            });
        } else {
            self.out.effects.push(Effect::Restarted {
                service: service.to_string(),
                instances: Vec::new(),
            });
        }
        Ok(())
    }

    /// Moves a `bow restart` on: the next instance once the current one is healthy again
    /// (or its deploy timeout passed, or it is gone).
    pub(crate) fn drive_restart(&mut self, name: &str) {
        let Some(state) = self.services.get_mut(name) else {
            return;
        };
        let Some(run) = state.restart.as_mut() else {
            return;
        };
        loop {
            if let Some((index, generation, _)) = run.current {
                let done = match state.slots.get(&index) {
                    None => true,
                    Some(slot) => {
                        run.expired
                            || (slot.health == crate::Health::Healthy
                                && slot.answered >= generation)
                    }
                };
                if !done {
                    return;
                }
                run.done.push(format!("{name}.{index}"));
                run.current = None;
                run.expired = false;
            }
            let Some(index) = run.queue.pop_front() else {
                let instances = std::mem::take(&mut run.done);
                state.restart = None;
                self.out.effects.push(Effect::Restarted {
                    service: name.to_string(),
                    instances,
                });
                return;
            };
            let Some(slot) = state.slots.get_mut(&index) else {
                run.done.push(format!("{name}.{index}"));
                continue;
            };
            slot.request_restart(&mut self.out);
            let token = self.out.token();
            self.out.timer(
                state.definition.deploy.timeout.as_std(),
                Timer::RestartWait {
                    service: name.to_string(),
                    token,
                },
            );
            run.current = Some((index, slot.generation, token));
        }
    }

    fn start_down(&mut self) {
        self.shutting_down = true;
        let mut queue: VecDeque<String> = self
            .spec
            .as_ref()
            .map(bow_spec::dependency_order)
            .unwrap_or_default()
            .into_iter()
            .rev()
            .collect();
        for name in self.services.keys() {
            if !queue.contains(name) {
                queue.push_back(name.clone());
            }
        }
        for state in self.services.values_mut() {
            state.converge = Converge::Idle;
            state.restart = None;
        }
        self.down = Some(Down {
            queue,
            current: None,
            stopped: Vec::new(),
        });
    }

    /// Moves a `bow down` on: the next service once the current one's instances are gone;
    /// done when nothing is left to stop.
    pub(crate) fn drive_down(&mut self) {
        let Some(mut down) = self.down.take() else {
            return;
        };
        loop {
            if let Some(current) = &down.current {
                if self.retiring.keys().any(|k| &k.service == current) {
                    break;
                }
                down.current = None;
            }
            let Some(name) = down.queue.pop_front() else {
                if self.retiring.is_empty() {
                    self.out.effects.push(Effect::Down {
                        stopped: std::mem::take(&mut down.stopped),
                    });
                    return;
                }
                break;
            };
            let slots = self
                .services
                .get_mut(&name)
                .map(|s| std::mem::take(&mut s.slots))
                .unwrap_or_default();
            for slot in slots.into_values() {
                down.stopped.push(slot.key.to_string());
                self.retire_slot(slot);
            }
            down.current = Some(name);
        }
        self.down = Some(down);
    }

    /// Emits the endpoints of every service whose healthy, routable set changed, ahead of
    /// the step's other effects.
    fn publish_endpoints(&mut self) {
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

fn no_service(spec: &Spec, service: &str) -> Refused {
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
