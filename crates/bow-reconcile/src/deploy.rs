//! Each service's convergence on its target release, as a state machine looked at after
//! every observation: wait for dependencies, prepare, then start and settle, change in place,
//! scale, or hand over to a replacing deploy (`rollout.rs`: rolling, blue-green, rollback).

use std::sync::Arc;

use bow_plan::ChangeClass;
use bow_spec::{Service, Strategy};

use crate::core::{Core, ids};
use crate::effect::{Effect, EventKind, Timer};
use crate::model::{DeployFailure, Health, InstanceKey, Phase, ReleaseStatus};
use crate::slot::Slot;

/// Transitions of one service in one step, at most (each waits on something or ends).
const MAX_TRANSITIONS: usize = 16;

/// A wait for health with a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadline {
    pub token: u64,
    pub passed: bool,
}

/// Where a service's convergence stands.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Converge {
    /// Nothing to do until the next apply (instances still restart on their own).
    Idle,
    /// Waiting for its dependencies to be healthy and their deploys of this apply done.
    Waiting,
    /// `Prepare` went out.
    Building,
    /// A first release or an in-place change: every instance healthy → live. Past the
    /// deadline it is reported failed once and keeps waiting.
    Settling { deadline: Deadline, reported: bool },
    Rolling {
        old: Vec<u32>,
        ready: usize,
        step: Roll,
    },
    BlueGreen {
        stale: Vec<u32>,
        green: Vec<u32>,
        deadline: Deadline,
        switched: bool,
    },
    RollingBack {
        release: i64,
        old_release: i64,
        old_definition: Arc<Service>,
        failure: Failure,
        step: Back,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Roll {
    /// New instances started; each must be healthy by the deadline.
    Batch {
        started: Vec<u32>,
        deadline: Deadline,
    },
    /// As many old instances as became healthy are being stopped.
    Retiring { indexes: Vec<u32> },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Back {
    /// New instances that never became healthy leave first.
    StoppingFailing {
        indexes: Vec<u32>,
        serving: Vec<u32>,
    },
    /// Old instances started to bring the old release back to full strength.
    Restoring {
        started: Vec<u32>,
        deadline: Deadline,
        serving: Vec<u32>,
    },
    /// The old release serves again; the new instances that served are drained.
    StoppingServing { indexes: Vec<u32> },
}

/// Why a deploy stopped: which new instance failed and how.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    pub reason: String,
    pub instance: Option<String>,
}

impl Converge {
    pub fn deadline_passed(&mut self, token: u64) {
        let deadline = match self {
            Converge::Settling { deadline, .. }
            | Converge::BlueGreen { deadline, .. }
            | Converge::Rolling {
                step: Roll::Batch { deadline, .. },
                ..
            }
            | Converge::RollingBack {
                step: Back::Restoring { deadline, .. },
                ..
            } => deadline,
            _ => return,
        };
        if deadline.token == token {
            deadline.passed = true;
        }
    }
}

impl Core {
    /// Looks at every service, dependencies first.
    pub(crate) fn drive_all(&mut self) {
        let order = self
            .spec
            .as_ref()
            .map(bow_spec::dependency_order)
            .unwrap_or_default();
        for name in order {
            // A transition may make the next one possible at once (nothing left to stop).
            for _ in 0..MAX_TRANSITIONS {
                let before = self.services.get(&name).map(|s| s.converge.clone());
                self.drive(&name);
                if self.services.get(&name).map(|s| &s.converge) == before.as_ref() {
                    break;
                }
            }
            self.drive_restart(&name);
        }
        self.drive_down();
    }

    pub(crate) fn drive(&mut self, name: &str) {
        let Some(state) = self.services.get_mut(name) else {
            return;
        };
        let converge = std::mem::replace(&mut state.converge, Converge::Idle);
        let next = match converge {
            Converge::Idle => Converge::Idle,
            Converge::Waiting => self.wait_for_dependencies(name),
            Converge::Building => Converge::Building,
            Converge::Settling { deadline, reported } => self.settle(name, deadline, reported),
            Converge::Rolling { old, ready, step } => self.rolling(name, old, ready, step),
            Converge::BlueGreen {
                stale,
                green,
                deadline,
                switched,
            } => self.blue_green(name, stale, green, deadline, switched),
            Converge::RollingBack {
                release,
                old_release,
                old_definition,
                failure,
                step,
            } => self.rolling_back(name, release, old_release, old_definition, failure, step),
        };
        if let Some(state) = self.services.get_mut(name) {
            state.converge = next;
        }
    }

    pub(crate) fn set_phase(&mut self, service: &str, phase: Phase, detail: impl Into<String>) {
        let detail = detail.into();
        let now = self.out.now;
        if let Some(progress) = self.progress.get_mut(service)
            && !progress.phase.finished()
            && (progress.phase != phase || progress.detail != detail)
        {
            progress.phase = phase;
            progress.detail = detail;
            if phase.finished() {
                progress.finished_at = Some(now);
            }
            self.out.effects.push(Effect::Progress(progress.clone()));
        }
    }

    pub(crate) fn set_failed(&mut self, service: &str, failure: Failure, serving: Option<i64>) {
        let now = self.out.now;
        if let Some(progress) = self.progress.get_mut(service) {
            progress.phase = Phase::Failed;
            progress.detail = failure.reason.clone();
            progress.failure = Some(DeployFailure {
                reason: failure.reason,
                instance: failure.instance,
                serving,
            });
            progress.finished_at = Some(now);
            self.out.effects.push(Effect::Progress(progress.clone()));
        }
    }

    pub(crate) fn deadline(&mut self, name: &str, timeout: std::time::Duration) -> Deadline {
        let token = self.out.token();
        self.out.timer(
            timeout,
            Timer::Deadline {
                service: name.to_string(),
                token,
            },
        );
        Deadline {
            token,
            passed: false,
        }
    }

    /// Whether `name` has its replicas healthy (instances of any release count: an old
    /// release serving while a dependency deploys is still serving).
    pub(crate) fn service_healthy(&self, name: &str) -> bool {
        let Some(definition) = self.spec.as_ref().and_then(|s| s.services.get(name)) else {
            return true;
        };
        let Some(state) = self.services.get(name) else {
            return definition.replicas == 0;
        };
        let healthy = state
            .slots
            .values()
            .filter(|s| s.health == Health::Healthy)
            .count();
        healthy as u32 >= definition.replicas
    }

    pub(crate) fn wait_for_dependencies(&mut self, name: &str) -> Converge {
        let Some(service) = self.spec.as_ref().and_then(|s| s.services.get(name)) else {
            return Converge::Idle;
        };
        let waiting: Vec<String> = service
            .depends_on
            .iter()
            .filter(|d| {
                !self.service_healthy(d)
                    || self.progress.get(*d).is_some_and(|p| !p.phase.finished())
            })
            .cloned()
            .collect();
        if !waiting.is_empty() {
            self.set_phase(name, Phase::Waiting, waiting.join(", "));
            return Converge::Waiting;
        }
        let definition = self.services[name].definition.clone();
        if let Some(python) = &definition.python {
            self.set_phase(name, Phase::Building, "python environment");
            self.out.emit(
                name,
                "",
                EventKind::Building,
                format!("python environment from {}", python.requirements),
            );
            self.out.effects.push(Effect::Prepare {
                service: name.to_string(),
                definition,
            });
            return Converge::Building;
        }
        self.begin(name)
    }

    pub(crate) fn prepared(&mut self, name: &str, result: Result<String, String>) {
        let Some(state) = self.services.get_mut(name) else {
            return;
        };
        if state.converge != Converge::Building {
            return;
        }
        match result {
            Ok(detail) => {
                self.out.emit(
                    name,
                    "",
                    EventKind::Built,
                    format!("python environment {detail}"),
                );
                let next = self.begin(name);
                self.services.get_mut(name).expect("service").converge = next;
            }
            Err(reason) => {
                state.converge = Converge::Idle;
                self.out.emit(
                    name,
                    &format!("{name}.1"),
                    EventKind::StartFailed,
                    format!("python environment: {reason}"),
                );
                let failure = Failure {
                    reason: format!("python environment: {reason}"),
                    instance: None,
                };
                self.set_failed(name, failure, None);
            }
        }
    }

    /// Brings the slots to the target: in-place changes reach running instances; anything
    /// else is a deploy.
    pub(crate) fn begin(&mut self, name: &str) -> Converge {
        let state = self.services.get_mut(name).expect("service");
        let (release, definition) = (state.release, state.definition.clone());
        let mut stale = Vec::new();
        for (index, slot) in state.slots.iter_mut() {
            if is_stale(slot, &definition, release) {
                stale.push(*index);
            } else if slot.release != release {
                slot.reconfigure(release, definition.clone(), &mut self.out);
            }
            // A set held out of the edge by a blue-green deploy another apply interrupted
            // would never serve otherwise.
            if definition.deploy.strategy != Strategy::BlueGreen || stale.is_empty() {
                slot.routable = true;
            }
        }
        if stale.is_empty() {
            self.scale(name);
            let deadline = self.deadline(name, definition.deploy.timeout.as_std());
            return self.settle(name, deadline, false);
        }
        match definition.deploy.strategy {
            Strategy::Rolling => {
                let state = &self.services[name];
                let message = format!(
                    "release {release} (rolling, {} instances, {} to replace)",
                    state.wanted,
                    stale.len()
                );
                // New instances already running (an interrupted deploy, adopted) count once
                // they are healthy: until then they are the first batch.
                let pending: Vec<u32> = state
                    .slots
                    .iter()
                    .filter(|(i, s)| !stale.contains(i) && s.health != Health::Healthy)
                    .map(|(i, _)| *i)
                    .collect();
                let ready = state.slots.len() - stale.len() - pending.len();
                self.out.emit(name, "", EventKind::Deploying, message);
                if pending.is_empty() {
                    return self.next_batch(name, stale, ready);
                }
                self.set_phase(name, Phase::Health, ids(name, &pending));
                let deadline = self.deadline(name, definition.deploy.timeout.as_std());
                Converge::Rolling {
                    old: stale,
                    ready,
                    step: Roll::Batch {
                        started: pending,
                        deadline,
                    },
                }
            }
            Strategy::BlueGreen => self.start_blue_green(name, stale),
        }
    }

    /// Starts `count` new slots at the lowest free indexes (an index being stopped stays
    /// taken); returns them.
    pub(crate) fn start_slots(
        &mut self,
        name: &str,
        count: usize,
        release: i64,
        definition: &Arc<Service>,
        routable: bool,
    ) -> Vec<u32> {
        let mut started = Vec::new();
        for _ in 0..count {
            let state = &self.services[name];
            let index = (1..)
                .find(|i| {
                    !state.slots.contains_key(i)
                        && !self.retiring.contains_key(&InstanceKey::new(name, *i))
                })
                .unwrap_or(u32::MAX);
            let key = InstanceKey::new(name, index);
            let slot = Slot::launch(key, release, definition.clone(), routable, &mut self.out);
            self.services
                .get_mut(name)
                .expect("service")
                .slots
                .insert(index, slot);
            started.push(index);
        }
        started
    }

    /// Takes slots out of the service and stops them (drained first).
    pub(crate) fn stop(&mut self, name: &str, indexes: &[u32]) {
        for index in indexes {
            let Some(slot) = self
                .services
                .get_mut(name)
                .and_then(|s| s.slots.remove(index))
            else {
                continue;
            };
            self.retire_slot(slot);
        }
    }

    pub(crate) fn gone(&self, name: &str, indexes: &[u32]) -> bool {
        indexes
            .iter()
            .all(|i| !self.retiring.contains_key(&InstanceKey::new(name, *i)))
    }

    /// New slots up to the wanted count, or the newest extra ones stopped.
    pub(crate) fn scale(&mut self, name: &str) {
        let state = &self.services[name];
        let (current, wanted) = (state.slots.len(), state.wanted);
        if current < wanted {
            let (release, definition) = (state.release, state.definition.clone());
            let started = self.start_slots(name, wanted - current, release, &definition, true);
            self.set_phase(name, Phase::Starting, ids(name, &started));
        } else if current > wanted {
            let extra: Vec<u32> = state
                .slots
                .keys()
                .rev()
                .take(current - wanted)
                .copied()
                .collect();
            self.set_phase(name, Phase::Draining, ids(name, &extra));
            self.stop(name, &extra);
        }
    }

    pub(crate) fn settle(
        &mut self,
        name: &str,
        deadline: Deadline,
        mut reported: bool,
    ) -> Converge {
        let state = &self.services[name];
        let healthy = state
            .slots
            .values()
            .filter(|s| s.health == Health::Healthy)
            .count();
        if healthy >= state.wanted {
            let release = state.release;
            self.went_live(name, release);
            return Converge::Idle;
        }
        let worst = state
            .slots
            .values()
            .filter(|s| s.health != Health::Healthy)
            .max_by_key(|s| s.health)
            .map(|s| (s.key.to_string(), s.describe_failure()));
        let (release, timeout, wanted) =
            (state.release, state.definition.deploy.timeout, state.wanted);
        self.set_phase(
            name,
            Phase::Health,
            format!("{healthy} of {wanted} healthy"),
        );
        if !reported && deadline.passed {
            reported = true;
            let (instance, why) = worst.unwrap_or_default();
            let reason = format!("not healthy within {timeout}: {instance} {why}");
            self.set_release_status(name, release, ReleaseStatus::Failed, Some(reason.clone()));
            self.out
                .emit(name, &instance, EventKind::DeployFailed, reason.clone());
            let failure = Failure {
                reason,
                instance: Some(instance),
            };
            self.set_failed(name, failure, None);
        }
        Converge::Settling { deadline, reported }
    }

    /// Records the release live (the one before it superseded) and the deploy done.
    pub(crate) fn went_live(&mut self, name: &str, release: i64) {
        let rows = self.releases.get(name).cloned().unwrap_or_default();
        let Some(row) = rows.iter().find(|r| r.number == release) else {
            return;
        };
        if row.status != ReleaseStatus::Live {
            self.set_release_status(name, release, ReleaseStatus::Live, None);
            for older in rows
                .iter()
                .filter(|r| r.number != release && r.status == ReleaseStatus::Live)
            {
                self.set_release_status(name, older.number, ReleaseStatus::Superseded, None);
            }
            let took = self.out.now - row.created_at;
            self.out.emit(
                name,
                "",
                EventKind::Deployed,
                format!(
                    "release {release} live ({}, {took} ms)",
                    row.strategy.label()
                ),
            );
        }
        self.set_phase(name, Phase::Done, format!("release {release} live"));
    }

    /// `Ok(None)`: every slot in `indexes` is healthy; `Ok(Some(id))`: `id` is not yet;
    /// `Err`: one exited, could not start or failed its checks.
    pub(crate) fn batch_state(
        &self,
        name: &str,
        indexes: &[u32],
    ) -> Result<Option<String>, Failure> {
        let mut pending = None;
        for index in indexes {
            let id = format!("{name}.{index}");
            let Some(slot) = self.services.get(name).and_then(|s| s.slots.get(index)) else {
                return Err(Failure {
                    reason: format!("{id} was removed"),
                    instance: None,
                });
            };
            if slot.health == Health::Healthy {
                continue;
            }
            let failed = slot.restarts_seen > 0
                || slot.last_exit.is_some()
                || matches!(
                    slot.health,
                    Health::Failed
                        | Health::Unhealthy
                        | Health::Backoff
                        | Health::CrashLooping
                        | Health::Stopped
                );
            if failed {
                let what = if slot.last_exit.is_some() {
                    "exited before it was healthy"
                } else if slot.health == Health::Failed {
                    "could not start"
                } else {
                    "failed its health check"
                };
                return Err(Failure {
                    reason: format!("{id} {what}: {}", slot.describe_failure()),
                    instance: Some(id),
                });
            }
            pending.get_or_insert(id);
        }
        Ok(pending)
    }

    /// Like `batch_state`, with the deadline: a pending instance past it fails.
    pub(crate) fn wait_healthy(
        &self,
        name: &str,
        indexes: &[u32],
        deadline: Deadline,
        timeout: bow_spec::units::Duration,
    ) -> Result<bool, Failure> {
        match self.batch_state(name, indexes)? {
            None => Ok(true),
            Some(pending) if deadline.passed => Err(Failure {
                reason: format!("{pending} was not healthy within {timeout}"),
                instance: Some(pending),
            }),
            Some(_) => Ok(false),
        }
    }
}

/// A slot that must be replaced (not updated in place) to run `definition`: `bow_plan`
/// classes the change.
fn is_stale(slot: &Slot, definition: &Service, release: i64) -> bool {
    slot.release != release
        && slot.definition.as_ref() != definition
        && bow_plan::classify_service_change(&slot.definition, definition)
            == Some(ChangeClass::Replace)
}
