//! Deploys that replace instances: rolling (`max_surge` new instances at a time, each batch
//! healthy before as many old ones leave), blue-green (the new set healthy while held out of
//! the edge, one switch) and the automatic rollback of a failed one.

use std::sync::Arc;

use bow_spec::Service;

use crate::core::{Core, ids};
use crate::deploy::{Back, Converge, Deadline, Failure, Roll};
use crate::effect::{Effect, EventKind};
use crate::model::{Health, Phase, ReleaseStatus};

impl Core {
    /// Rolling: `max_surge` new instances at a time; each batch healthy (and so in the edge)
    /// before as many old ones are drained and stopped.
    pub(crate) fn rolling(
        &mut self,
        name: &str,
        old: Vec<u32>,
        ready: usize,
        step: Roll,
    ) -> Converge {
        let definition = self.services[name].definition.clone();
        match step {
            Roll::Batch { started, deadline } => {
                match self.wait_healthy(name, &started, deadline, definition.deploy.timeout) {
                    Err(failure) => self.start_rollback(name, failure),
                    Ok(false) => Converge::Rolling {
                        old,
                        ready,
                        step: Roll::Batch { started, deadline },
                    },
                    Ok(true) => self.retire_old(name, old, ready + started.len(), started.len()),
                }
            }
            Roll::Retiring { indexes } => {
                if self.gone(name, &indexes) {
                    self.next_batch(name, old, ready)
                } else {
                    Converge::Rolling {
                        old,
                        ready,
                        step: Roll::Retiring { indexes },
                    }
                }
            }
        }
    }

    pub(crate) fn retire_old(
        &mut self,
        name: &str,
        mut old: Vec<u32>,
        ready: usize,
        batch: usize,
    ) -> Converge {
        let wanted = self.services[name].wanted;
        let retire = if ready >= wanted {
            old.len()
        } else {
            batch.min(old.len())
        };
        let retiring: Vec<u32> = old.drain(..retire).collect();
        if retiring.is_empty() {
            return self.next_batch(name, old, ready);
        }
        self.set_phase(name, Phase::Draining, ids(name, &retiring));
        self.stop(name, &retiring);
        Converge::Rolling {
            old,
            ready,
            step: Roll::Retiring { indexes: retiring },
        }
    }

    pub(crate) fn next_batch(&mut self, name: &str, old: Vec<u32>, ready: usize) -> Converge {
        let state = &self.services[name];
        let (wanted, release, definition) = (state.wanted, state.release, state.definition.clone());
        if ready >= wanted && old.is_empty() {
            self.went_live(name, release);
            return Converge::Idle;
        }
        let surge = definition.deploy.max_surge.max(1) as usize;
        let batch = surge.min(wanted.saturating_sub(ready));
        if batch == 0 {
            return self.retire_old(name, old, ready, 0);
        }
        let started = self.start_slots(name, batch, release, &definition, true);
        self.set_phase(name, Phase::Starting, ids(name, &started));
        self.set_phase(name, Phase::Health, ids(name, &started));
        let deadline = self.deadline(name, definition.deploy.timeout.as_std());
        Converge::Rolling {
            old,
            ready,
            step: Roll::Batch { started, deadline },
        }
    }

    /// Blue-green: the whole new set healthy while held out of the edge, one atomic switch,
    /// then the old set drained and stopped.
    pub(crate) fn start_blue_green(&mut self, name: &str, stale: Vec<u32>) -> Converge {
        let state = self.services.get_mut(name).expect("service");
        let (wanted, release, definition) = (state.wanted, state.release, state.definition.clone());
        self.out.emit(
            name,
            "",
            EventKind::Deploying,
            format!("release {release} (blue-green, {wanted} instances)"),
        );
        // New instances already running (an interrupted deploy) wait for the switch too.
        let mut green = Vec::new();
        for (index, slot) in state.slots.iter_mut() {
            if !stale.contains(index) {
                slot.routable = false;
                green.push(*index);
            }
        }
        let missing = wanted.saturating_sub(green.len());
        let started = self.start_slots(name, missing, release, &definition, false);
        self.set_phase(name, Phase::Starting, ids(name, &started));
        green.extend(started);
        self.set_phase(name, Phase::Health, ids(name, &green));
        let deadline = self.deadline(name, definition.deploy.timeout.as_std());
        self.blue_green(name, stale, green, deadline, false)
    }

    pub(crate) fn blue_green(
        &mut self,
        name: &str,
        stale: Vec<u32>,
        green: Vec<u32>,
        deadline: Deadline,
        switched: bool,
    ) -> Converge {
        if switched {
            if self.gone(name, &stale) {
                let release = self.services[name].release;
                self.went_live(name, release);
                return Converge::Idle;
            }
            return Converge::BlueGreen {
                stale,
                green,
                deadline,
                switched,
            };
        }
        let timeout = self.services[name].definition.deploy.timeout;
        match self.wait_healthy(name, &green, deadline, timeout) {
            Err(failure) => return self.start_rollback(name, failure),
            Ok(false) => {
                return Converge::BlueGreen {
                    stale,
                    green,
                    deadline,
                    switched,
                };
            }
            Ok(true) => {}
        }
        self.set_phase(name, Phase::Switching, "");
        // One step: the endpoints published after it hold the new set only.
        for (index, slot) in self
            .services
            .get_mut(name)
            .expect("service")
            .slots
            .iter_mut()
        {
            slot.routable = green.contains(index);
        }
        self.out.emit(
            name,
            "",
            EventKind::Switched,
            format!("edge: {} → {}", ids(name, &stale), ids(name, &green)),
        );
        self.set_phase(name, Phase::Draining, ids(name, &stale));
        self.stop(name, &stale);
        self.blue_green(name, stale, green, deadline, true)
    }

    /// A deploy failed: new instances that never served leave, the old release is brought
    /// back to full strength, then the new instances that served are drained.
    pub(crate) fn start_rollback(&mut self, name: &str, failure: Failure) -> Converge {
        let release = self.services[name].release;
        self.set_phase(name, Phase::RollingBack, failure.reason.clone());
        self.out.emit(
            name,
            failure.instance.as_deref().unwrap_or(""),
            EventKind::DeployFailed,
            format!("release {release}: {}", failure.reason),
        );
        let live = self
            .releases
            .get(name)
            .and_then(|rows| {
                rows.iter()
                    .rev()
                    .find(|r| r.status == ReleaseStatus::Live && r.number != release)
            })
            .map(|r| (r.number, Arc::new(r.definition.clone())));
        // What the old release runs: its recorded definition, else what an old instance runs.
        let state = &self.services[name];
        let running_old = state
            .slots
            .values()
            .filter(|s| s.release != release)
            .max_by_key(|s| s.release)
            .map(|s| (s.release, s.definition.clone()));
        let Some((old_release, old_definition)) = live.or(running_old) else {
            self.set_release_status(
                name,
                release,
                ReleaseStatus::Failed,
                Some(failure.reason.clone()),
            );
            self.set_failed(name, failure, None);
            return Converge::Idle;
        };
        // New instances that never became healthy serve nothing: out at once.
        let (serving, failing): (Vec<u32>, Vec<u32>) = state
            .slots
            .iter()
            .filter(|(_, s)| s.release == release)
            .map(|(i, _)| *i)
            .partition(|i| {
                let slot = &state.slots[i];
                slot.health == Health::Healthy && slot.routable
            });
        self.stop(name, &failing);
        let step = Back::StoppingFailing {
            indexes: failing,
            serving,
        };
        self.rolling_back(name, release, old_release, old_definition, failure, step)
    }

    pub(crate) fn rolling_back(
        &mut self,
        name: &str,
        release: i64,
        old_release: i64,
        old_definition: Arc<Service>,
        failure: Failure,
        step: Back,
    ) -> Converge {
        let step = match step {
            Back::StoppingFailing { indexes, serving } if self.gone(name, &indexes) => {
                let remaining_old = self.services[name]
                    .slots
                    .values()
                    .filter(|s| s.release != release)
                    .count();
                let restore = (old_definition.replicas as usize).saturating_sub(remaining_old);
                let started = self.start_slots(name, restore, old_release, &old_definition, true);
                if started.is_empty() {
                    self.old_serves_again(name, release, &serving)
                } else {
                    self.set_phase(
                        name,
                        Phase::RollingBack,
                        format!("restoring {}", ids(name, &started)),
                    );
                    let deadline = self.deadline(name, old_definition.deploy.timeout.as_std());
                    Back::Restoring {
                        started,
                        deadline,
                        serving,
                    }
                }
            }
            Back::Restoring {
                started,
                deadline,
                serving,
            } => match self.wait_healthy(name, &started, deadline, old_definition.deploy.timeout) {
                Ok(false) => Back::Restoring {
                    started,
                    deadline,
                    serving,
                },
                outcome => {
                    if let Err(again) = outcome {
                        self.out
                            .emit(name, "", EventKind::RollbackDegraded, again.reason);
                    }
                    self.old_serves_again(name, release, &serving)
                }
            },
            Back::StoppingServing { indexes } if self.gone(name, &indexes) => {
                self.rolled_back(name, release, old_release, old_definition, failure);
                return Converge::Idle;
            }
            waiting => waiting,
        };
        Converge::RollingBack {
            release,
            old_release,
            old_definition,
            failure,
            step,
        }
    }

    /// Every old instance serves again before the new ones leave the edge.
    pub(crate) fn old_serves_again(&mut self, name: &str, release: i64, serving: &[u32]) -> Back {
        for slot in self
            .services
            .get_mut(name)
            .expect("service")
            .slots
            .values_mut()
        {
            if slot.release != release {
                slot.routable = true;
            }
        }
        self.stop(name, serving);
        Back::StoppingServing {
            indexes: serving.to_vec(),
        }
    }

    /// The release is failed and the applied definition is the old one again, so that a
    /// restarted agent does not retry it.
    pub(crate) fn rolled_back(
        &mut self,
        name: &str,
        release: i64,
        old_release: i64,
        old_definition: Arc<Service>,
        failure: Failure,
    ) {
        self.set_release_status(
            name,
            release,
            ReleaseStatus::Failed,
            Some(failure.reason.clone()),
        );
        self.targets.insert(name.to_string(), old_release);
        if let Some(spec) = self.spec.as_mut() {
            spec.services
                .insert(name.to_string(), old_definition.as_ref().clone());
            self.revision += 1;
            self.out.effects.push(Effect::RecordRevision {
                revision: self.revision,
                spec: Box::new(spec.clone()),
            });
        }
        self.assign();
        self.out.emit(
            name,
            "",
            EventKind::RolledBack,
            format!("release {old_release} serves again; release {release} failed"),
        );
        self.set_failed(name, failure, Some(old_release));
    }
}
