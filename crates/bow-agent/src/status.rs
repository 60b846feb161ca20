//! What the agent reports: `bow status` (services, instances, the edge) and `bow events`.

use crate::agent::{Agent, EDGE_FAILED_NOTE, now_ms};
use crate::api::{Event, Health, InstanceStatus, ServiceStatus, StatusReport};
use crate::error::Result;

impl Agent {
    pub fn status(&self) -> StatusReport {
        let inner = self.lock();
        let now = now_ms() as u64;
        let mut services = Vec::new();
        if let Some(spec) = &inner.spec {
            for (name, service) in &spec.services {
                let mut instances: Vec<InstanceStatus> = inner
                    .services
                    .get(name)
                    .map(|r| r.slots.values().map(|s| s.status.clone()).collect())
                    .unwrap_or_default();
                for instance in &mut instances {
                    instance.uptime_ms = instance
                        .started_at_ms
                        .filter(|_| instance.pid.is_some())
                        .map(|s| now.saturating_sub(s));
                }
                let state = if instances.len() < service.replicas as usize {
                    instances
                        .iter()
                        .map(|i| i.health)
                        .max()
                        .unwrap_or(Health::Starting)
                        .max(Health::Starting)
                } else {
                    instances
                        .iter()
                        .map(|i| i.health)
                        .max()
                        .unwrap_or(Health::Healthy)
                };
                services.push(ServiceStatus {
                    name: name.clone(),
                    kind: service.workload.kind().to_string(),
                    replicas: service.replicas,
                    release: inner.services.get(name).map_or(0, |r| r.release),
                    state,
                    instances,
                    sandbox: (!matches!(service.workload, bow_spec::Workload::Container(_)))
                        .then(|| service.sandbox.summary()),
                });
            }
        }
        let mut notes = Vec::new();
        if let Some(reason) = self
            .edge_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            notes.push(format!("{EDGE_FAILED_NOTE}{reason}"));
        }
        if !self.root {
            notes.push(
                "not running as root: services run as the agent's user, without resource limits, and their sandbox has no mount namespace and keeps the bounding set (no new privileges, the system call filter and rlimits hold)"
                    .to_string(),
            );
        }
        notes.extend(self.discovery_note(inner.spec.as_ref()));
        StatusReport {
            project: self.project.clone(),
            environment: self.environment.clone(),
            agent_pid: std::process::id(),
            revision: inner.revision,
            services,
            edge: None,
            discovery: self.discovery_status(&inner),
            notes,
        }
    }

    pub fn events(&self, after_id: i64, limit: usize, last: bool) -> Result<Vec<Event>> {
        let store = self.store();
        let rows = if last {
            store.last_events(limit)?
        } else {
            store.events_after(after_id, limit)?
        };
        Ok(rows
            .into_iter()
            .map(|row| Event {
                id: row.id,
                at_ms: row.at_ms,
                service: row.service,
                instance: row.instance,
                kind: row.kind,
                message: row.message,
            })
            .collect())
    }
}
