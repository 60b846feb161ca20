//! Adoption: instances that outlived a previous agent are found in `run/*/state.json`,
//! verified by pid *and* process start time, and handed to their slots; the rest are stopped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bow_driver::{InstanceHandle, ProcessState};

use crate::agent::Agent;
use crate::supervisor::Adopted;

/// Instances still running from a previous agent, by instance id. Instances that ended while
/// no agent watched get an `exited` event.
pub async fn scan(agent: &Arc<Agent>) -> BTreeMap<String, Adopted> {
    let rows: BTreeMap<String, bow_store::InstanceRow> = agent
        .store()
        .instances()
        .unwrap_or_default()
        .into_iter()
        .map(|row| (row.id.clone(), row))
        .collect();
    let mut adopted = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(crate::layout::run_dir(&agent.state_dir)) else {
        return adopted;
    };
    for entry in entries.flatten() {
        let Ok(Some(handle)) = InstanceHandle::load(&entry.path()) else {
            continue;
        };
        let row = rows.get(&handle.instance_id);
        match agent.driver.verify(&handle) {
            Ok(ProcessState::Running) => {
                let port = row
                    .map(|r| r.port)
                    .or_else(|| port_from_environ(handle.pid));
                match port {
                    Some(port) => {
                        let restarts = row.map_or(0, |r| r.restarts);
                        adopted.insert(
                            handle.instance_id.clone(),
                            Adopted {
                                handle,
                                port,
                                restarts,
                            },
                        );
                    }
                    None => {
                        agent.emit(
                            &handle.service,
                            &handle.instance_id,
                            "stopping",
                            "running but its port is unknown; replacing it",
                        );
                        stop_handle(agent, &handle).await;
                    }
                }
            }
            _ => {
                if row.is_some() {
                    let message = match agent.driver.exit_status(&handle) {
                        Ok(Some(exit)) => format!("{exit} while no agent was running"),
                        _ => "ended while no agent was running".to_string(),
                    };
                    agent.emit(&handle.service, &handle.instance_id, "exited", &message);
                    agent.forget_instance(&handle.instance_id);
                }
            }
        }
    }
    adopted
}

/// Stops adopted instances that the applied spec does not want (service gone, index above
/// replicas, or nothing applied at all).
pub async fn stop_unwanted(agent: &Arc<Agent>) {
    let unwanted: Vec<Adopted> = {
        let mut inner = agent.lock();
        let spec = inner.spec.clone();
        let ids: Vec<String> = inner
            .adopted
            .iter()
            .filter(|(_, a)| {
                // Extra instances of a wanted service are the deploy's to sort out (an agent
                // killed mid-deploy leaves old and new ones running).
                let wanted = spec
                    .as_ref()
                    .is_some_and(|s| s.services.contains_key(&a.handle.service));
                !wanted
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.iter()
            .filter_map(|id| inner.adopted.remove(id))
            .collect()
    };
    for adopted in unwanted {
        agent.emit(
            &adopted.handle.service,
            &adopted.handle.instance_id,
            "stopping",
            "no longer in the applied file",
        );
        stop_handle(agent, &adopted.handle).await;
        agent.forget_instance(&adopted.handle.instance_id);
    }
}

/// Stops an instance that has no slot.
pub async fn stop_handle(agent: &Arc<Agent>, handle: &InstanceHandle) {
    let driver = agent.driver.clone();
    let stopped = handle.clone();
    let timeout = agent
        .service_spec(&handle.service)
        .map_or(Duration::from_secs(10), |s| s.stop_timeout.as_std());
    let outcome = tokio::task::spawn_blocking(move || driver.stop(&stopped, timeout)).await;
    let message = match outcome {
        Ok(Ok(outcome)) => outcome
            .exit()
            .map_or_else(|| "stopped".to_string(), |exit| format!("stopped: {exit}")),
        Ok(Err(error)) => format!("stop failed: {error}"),
        Err(error) => format!("stop failed: {error}"),
    };
    agent.emit(&handle.service, &handle.instance_id, "stopped", &message);
}

/// `PORT` from a process's environment (for an instance the store lost track of).
fn port_from_environ(pid: i32) -> Option<u16> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(b"PORT="))
        .and_then(|value| std::str::from_utf8(value).ok()?.parse().ok())
}
