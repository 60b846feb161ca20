//! Stopping: `bow restart` (one instance at a time, each healthy before the next), a slot's
//! instances stopped, and `bow down` (dependants first, a service's instances in parallel,
//! then adopted leftovers, the edge, discovery and what the drivers hold).

use bow_reconcile::EventKind;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{Agent, Slot};
use crate::api::Health;
use crate::error::{AgentError, Result};
use crate::supervisor::{self, Adopted};

impl Agent {
    /// Restarts one instance and waits (up to `timeout`) until it is healthy again.
    async fn restart_slot(&self, service: &str, index: u32, timeout: Duration) {
        let Some(generation) = self.request_restart(service, index) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let inner = self.lock();
            let Some(slot) = inner.slot(service, index) else {
                return;
            };
            if slot.status.health == Health::Healthy
                && supervisor::restarted_generation(&slot.status) >= generation
            {
                return;
            }
        }
    }

    /// Asks an instance's supervisor to stop it and start it again; the restart generation it
    /// will answer to once restarted.
    pub(crate) fn request_restart(&self, service: &str, index: u32) -> Option<u64> {
        let inner = self.lock();
        let slot = inner.slot(service, index)?;
        let mut control = *slot.control.borrow();
        control.restart_generation += 1;
        // A restart asked for by hand ends a hold left by a backup that never resumed.
        control.held = false;
        slot.control.send_replace(control);
        Some(control.restart_generation)
    }

    /// `bow restart SERVICE`: one instance at a time, each healthy before the next.
    pub async fn restart_service(&self, service: &str) -> Result<Vec<String>> {
        let (indexes, timeout) = {
            let inner = self.lock();
            let spec = inner
                .spec
                .as_ref()
                .ok_or_else(|| AgentError::Other("nothing is applied yet".into()))?;
            let definition = spec.services.get(service).ok_or_else(|| {
                AgentError::Other(format!(
                    "no service `{service}`; services: {}",
                    spec.services.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
            let indexes: Vec<u32> = inner
                .services
                .get(service)
                .map(|r| r.slots.keys().copied().collect())
                .unwrap_or_default();
            (indexes, definition.deploy.timeout.as_std())
        };
        let mut restarted = Vec::new();
        for index in indexes {
            self.restart_slot(service, index, timeout).await;
            restarted.push(format!("{service}.{index}"));
        }
        Ok(restarted)
    }

    /// Stops every instance of `services` (in this order, each service's in parallel) and
    /// keeps them stopped until `resume`: a backup or restore of volumes, the dependants of a
    /// service being restored. Waits up to each service's stop timeout plus 10 s.
    pub async fn hold(&self, services: &[String]) -> Result<Vec<String>> {
        let mut held = Vec::new();
        for service in services {
            let (indexes, timeout) = self.slots_of(service)?;
            for index in &indexes {
                if let Some(slot) = self.lock().slot(service, *index) {
                    slot.control.send_modify(|c| c.held = true);
                }
            }
            let deadline = tokio::time::Instant::now() + timeout + Duration::from_secs(10);
            for index in indexes {
                loop {
                    let stopped = self.lock().slot(service, index).is_none_or(|slot| {
                        slot.status.pid.is_none() && slot.status.health == Health::Stopped
                    });
                    if stopped {
                        break;
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Err(AgentError::Other(format!(
                            "{service}.{index} did not stop in time"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                held.push(format!("{service}.{index}"));
            }
        }
        Ok(held)
    }

    /// Lifts the hold of `services`, in this order, each healthy (within its deploy timeout)
    /// before the next is started.
    pub async fn resume(&self, services: &[String]) -> Result<Vec<String>> {
        let mut resumed = Vec::new();
        for service in services {
            let (indexes, _) = self.slots_of(service)?;
            let timeout = self
                .lock()
                .spec
                .as_ref()
                .and_then(|spec| spec.services.get(service))
                .map_or(Duration::from_secs(60), |d| d.deploy.timeout.as_std());
            for index in &indexes {
                if let Some(slot) = self.lock().slot(service, *index) {
                    slot.control.send_modify(|c| c.held = false);
                }
            }
            let deadline = tokio::time::Instant::now() + timeout;
            for index in indexes {
                loop {
                    let healthy = self
                        .lock()
                        .slot(service, index)
                        .is_none_or(|slot| slot.status.health == Health::Healthy);
                    if healthy {
                        break;
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Err(AgentError::Other(format!(
                            "{service}.{index} was started again but is not healthy after {}",
                            bow_spec::units::Duration(timeout)
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                resumed.push(format!("{service}.{index}"));
            }
        }
        Ok(resumed)
    }

    /// The slot indexes of `service` and its stop timeout; an error naming the services when
    /// there is no such service.
    fn slots_of(&self, service: &str) -> Result<(Vec<u32>, Duration)> {
        let inner = self.lock();
        let spec = inner
            .spec
            .as_ref()
            .ok_or_else(|| AgentError::Other("nothing is applied yet".into()))?;
        let definition = spec.services.get(service).ok_or_else(|| {
            AgentError::Other(format!(
                "no service `{service}`; services: {}",
                spec.services.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let indexes = inner
            .services
            .get(service)
            .map(|r| r.slots.keys().copied().collect())
            .unwrap_or_default();
        Ok((indexes, definition.stop_timeout.as_std()))
    }

    /// Stops the given slots of a service (in parallel: each is drained, then stopped) and
    /// waits for them. Their indexes stay taken until they are gone.
    pub(crate) async fn stop_slots(
        &self,
        service: &str,
        slots: BTreeMap<u32, Slot>,
    ) -> Vec<String> {
        let mut stopped = Vec::new();
        let mut tasks = Vec::new();
        if let Some(runtime) = self.lock().services.get_mut(service) {
            runtime.stopping.extend(slots.keys().copied());
        }
        let indexes: Vec<u32> = slots.keys().copied().collect();
        for (index, slot) in slots {
            slot.control.send_modify(|c| c.stop = true);
            stopped.push(format!("{service}.{index}"));
            if let Some(task) = slot.task {
                tasks.push(task);
            }
        }
        for task in tasks {
            let _ = task.await;
        }
        if let Some(runtime) = self.lock().services.get_mut(service) {
            for index in indexes {
                runtime.stopping.remove(&index);
            }
        }
        stopped
    }

    /// Stops every instance, dependants first, and ends the agent.
    pub async fn down(self: &Arc<Self>) -> Vec<String> {
        let stopped = self.down_instances().await;
        self.detach();
        stopped
    }

    /// Stops every instance, dependants first; the agent keeps answering until `detach`.
    pub async fn down_instances(self: &Arc<Self>) -> Vec<String> {
        let (order, mut services) = {
            let mut inner = self.lock();
            inner.shutting_down = true;
            let order = inner
                .spec
                .as_ref()
                .map(bow_spec::dependency_order)
                .unwrap_or_default();
            let services = std::mem::take(&mut inner.services);
            (order, services)
        };
        for runtime in services.values_mut() {
            if let Some(starter) = runtime.starter.take() {
                starter.abort();
            }
        }
        let mut stopped = Vec::new();
        let mut names: Vec<String> = order.into_iter().rev().collect();
        names.extend(
            services
                .keys()
                .filter(|n| !names.contains(n))
                .cloned()
                .collect::<Vec<_>>(),
        );
        for name in names {
            if let Some(runtime) = services.remove(&name) {
                stopped.extend(self.stop_slots(&name, runtime.slots).await);
            }
        }
        stopped.extend(self.stop_adopted_leftovers().await);
        self.stop_edge().await;
        self.stop_admin().await;
        self.stop_alerts().await;
        // Anything left of them (a child that escaped its process group).
        for driver in self.drivers.all() {
            driver.clean_up().await;
        }
        self.emit(
            "",
            "",
            EventKind::Stopped,
            &format!("down: {} instances stopped", stopped.len()),
        );
        stopped
    }

    /// Stops adopted instances no slot took over: dependants first, a service's instances in
    /// parallel.
    async fn stop_adopted_leftovers(self: &Arc<Self>) -> Vec<String> {
        let (leftovers, order) = {
            let mut inner = self.lock();
            let order = inner
                .spec
                .as_ref()
                .map(bow_spec::dependency_order)
                .unwrap_or_default();
            (std::mem::take(&mut inner.adopted), order)
        };
        let mut by_service: BTreeMap<String, Vec<Adopted>> = BTreeMap::new();
        for adopted in leftovers.into_values() {
            by_service
                .entry(adopted.handle.service().to_string())
                .or_default()
                .push(adopted);
        }
        let mut names: Vec<String> = order
            .into_iter()
            .rev()
            .filter(|n| by_service.contains_key(n))
            .collect();
        names.extend(
            by_service
                .keys()
                .filter(|n| !names.contains(n))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let mut stopped = Vec::new();
        for name in names {
            let Some(group) = by_service.remove(&name) else {
                continue;
            };
            let mut tasks = Vec::new();
            for adopted in group {
                stopped.push(adopted.handle.instance_id().to_string());
                let agent = self.clone();
                tasks.push(tokio::spawn(async move {
                    crate::adopt::stop_handle(&agent, &adopted.handle).await;
                    agent.forget_instance(adopted.handle.instance_id());
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        }
        stopped
    }
}
