//! Requests that run over several steps: `bow restart` (one instance at a time, each
//! healthy again before the next) and `bow down` (dependants first).

use std::collections::VecDeque;

use crate::core::{Core, Down, Refused, RestartRun, no_service};
use crate::deploy::Converge;
use crate::effect::{Effect, Timer};

impl Core {
    /// `bow restart SERVICE`: queues every instance; `drive_restart` takes them one by one.
    pub(crate) fn restart(&mut self, service: &str) -> Result<(), Refused> {
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

    pub(crate) fn start_down(&mut self) {
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
}
