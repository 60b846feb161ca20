//! Adoption: every instance that outlived a previous agent is accounted for. The run dir
//! (`run/*/state.json`, verified by pid *and* process start time) names the instances to hand
//! to their slots; the process table names what no handle accounts for (a shim killed with its
//! agent before it wrote `state.json`), which is stopped with an `orphan-stopped` event. A
//! deploy that finds a live handle where it wanted to start an instance stops that orphan the
//! same way (`stop_orphan`) instead of failing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bow_driver::strays::{self, RunProcess};
use bow_driver::{InstanceHandle, ProcessState};

use crate::agent::Agent;
use crate::supervisor::Adopted;

/// How long a starting agent waits for shims that have not written their `state.json` yet
/// (started the moment the previous agent died) before it stops them as orphans.
const STARTING_SHIM_PATIENCE: Duration = Duration::from_secs(3);

/// One `run/<id>/state.json` and whether its process still runs.
struct Observed {
    handle: InstanceHandle,
    running: bool,
}

/// What to do with an instance found in the run dir (decided on data, see [`decide`]).
#[derive(Debug, PartialEq)]
enum Disposition {
    /// Running, with a known port: handed to a slot.
    Adopt(Box<Adopted>),
    /// Running but not adoptable: stopped, with the reason.
    Stop(String),
    /// Ended while no agent ran, and the store still lists it.
    Ended,
    /// Ended, and long forgotten.
    Nothing,
}

/// What the store recorded of an instance: its port and restarts.
#[derive(Debug, Clone, Copy)]
struct Recorded {
    port: u16,
    restarts: u32,
}

fn decide(
    observed: Observed,
    recorded: Option<Recorded>,
    environ_port: Option<u16>,
) -> Disposition {
    if !observed.running {
        return if recorded.is_some() {
            Disposition::Ended
        } else {
            Disposition::Nothing
        };
    }
    match recorded.map(|r| r.port).or(environ_port) {
        Some(port) => Disposition::Adopt(Box::new(Adopted {
            handle: observed.handle,
            port,
            restarts: recorded.map_or(0, |r| r.restarts),
        })),
        None => Disposition::Stop("running but its port is unknown; replacing it".into()),
    }
}

/// Instances still running from a previous agent, by instance id. Instances that ended while
/// no agent watched get an `exited` event; processes no handle accounts for are stopped.
pub async fn scan(agent: &Arc<Agent>) -> BTreeMap<String, Adopted> {
    let rows: BTreeMap<String, Recorded> = agent
        .store()
        .instances()
        .unwrap_or_default()
        .into_iter()
        .map(|row| {
            (
                row.id.clone(),
                Recorded {
                    port: row.port,
                    restarts: row.restarts,
                },
            )
        })
        .collect();
    let (observed, orphans) = observe(agent).await;
    stop_strays(agent, orphans).await;
    let mut adopted = BTreeMap::new();
    for found in observed {
        let handle = found.handle.clone();
        let recorded = rows.get(&handle.instance_id).copied();
        let environ_port = found
            .running
            .then(|| port_from_environ(handle.pid))
            .flatten();
        match decide(found, recorded, environ_port) {
            Disposition::Adopt(instance) => {
                adopted.insert(handle.instance_id.clone(), *instance);
            }
            Disposition::Stop(reason) => {
                agent.emit(&handle.service, &handle.instance_id, "stopping", &reason);
                stop_handle(agent, &handle).await;
            }
            Disposition::Ended => {
                let message = match agent.driver.exit_status(&handle) {
                    Ok(Some(exit)) => format!("{exit} while no agent was running"),
                    _ => "ended while no agent was running".to_string(),
                };
                agent.emit(&handle.service, &handle.instance_id, "exited", &message);
                agent.forget_instance(&handle.instance_id);
            }
            Disposition::Nothing => {}
        }
    }
    adopted
}

/// The run dir's handles and the processes no handle accounts for. A shim that is not
/// accounted for may still be starting (its `state.json` comes right after its service's
/// exec): the look is repeated until none is left or the patience runs out.
async fn observe(agent: &Arc<Agent>) -> (Vec<Observed>, Vec<RunProcess>) {
    let deadline = Instant::now() + STARTING_SHIM_PATIENCE;
    loop {
        let observed = read_run_dir(agent);
        let handles: Vec<InstanceHandle> = observed.iter().map(|o| o.handle.clone()).collect();
        let live: Vec<InstanceHandle> = observed
            .iter()
            .filter(|o| o.running)
            .map(|o| o.handle.clone())
            .collect();
        let found = list_processes(agent);
        let orphans = strays::unaccounted(&found, &handles, &live);
        if !orphans.iter().any(|p| p.shim) || Instant::now() >= deadline {
            return (observed, orphans);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read_run_dir(agent: &Agent) -> Vec<Observed> {
    let Ok(entries) = std::fs::read_dir(crate::layout::run_dir(&agent.state_dir)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let handle = InstanceHandle::load(&entry.path()).ok()??;
            let running = matches!(agent.driver.verify(&handle), Ok(ProcessState::Running));
            Some(Observed { handle, running })
        })
        .collect()
}

/// Every live process of this state dir's instances, by the process table.
fn list_processes(agent: &Agent) -> Vec<RunProcess> {
    let run_dir = crate::layout::run_dir(&agent.state_dir);
    strays::list(&strays::Markers {
        run_dir: &run_dir,
        environment: &[
            ("BOW_PROJECT", agent.project.as_str()),
            ("BOW_ENV", agent.environment.as_str()),
        ],
        instance_variable: "BOW_INSTANCE",
    })
}

/// Stops processes no handle accounts for, one `orphan-stopped` event per instance id.
async fn stop_strays(agent: &Arc<Agent>, orphans: Vec<RunProcess>) {
    let mut by_instance: BTreeMap<String, Vec<RunProcess>> = BTreeMap::new();
    for process in orphans {
        by_instance
            .entry(process.instance_id.clone())
            .or_default()
            .push(process);
    }
    let mut tasks = Vec::new();
    for (id, processes) in by_instance {
        let service = id
            .rsplit_once('.')
            .map_or(id.as_str(), |(s, _)| s)
            .to_string();
        let timeout = agent
            .service_spec(&service)
            .map_or(Duration::from_secs(10), |s| s.stop_timeout.as_std());
        let agent = agent.clone();
        tasks.push(tokio::spawn(async move {
            let pids = processes
                .iter()
                .map(|p| format!("{}{}", p.pid, if p.shim { " (shim)" } else { "" }))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = tokio::task::spawn_blocking(move || strays::stop(&processes, timeout)).await;
            agent.emit(
                &service,
                &id,
                "orphan-stopped",
                &format!(
                    "pid {pids}: ran with no handle in run/{id}/state.json naming it (started as the previous agent died); stopped"
                ),
            );
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// The instance `id`'s handle when its process runs (the run dir still names a live process).
pub(crate) fn live_handle(agent: &Agent, id: &str) -> Option<InstanceHandle> {
    let dir = crate::layout::run_dir(&agent.state_dir).join(id);
    let handle = InstanceHandle::load(&dir).ok()??;
    matches!(agent.driver.verify(&handle), Ok(ProcessState::Running)).then_some(handle)
}

/// Stops an instance that runs under an id no slot holds (an orphan a deploy found where it
/// wanted to start one), with an `orphan-stopped` event.
pub(crate) async fn stop_orphan(agent: &Arc<Agent>, handle: &InstanceHandle, found_by: &str) {
    {
        let mut inner = agent.lock();
        if inner
            .adopted
            .get(&handle.instance_id)
            .is_some_and(|a| a.handle.pid == handle.pid)
        {
            inner.adopted.remove(&handle.instance_id);
        }
    }
    let driver = agent.driver.clone();
    let stopped = handle.clone();
    let timeout = agent
        .service_spec(&handle.service)
        .map_or(Duration::from_secs(10), |s| s.stop_timeout.as_std());
    let outcome = tokio::task::spawn_blocking(move || driver.stop(&stopped, timeout)).await;
    let how = match outcome {
        Ok(Ok(outcome)) => outcome
            .exit()
            .map_or_else(|| "stopped".to_string(), |exit| format!("stopped: {exit}")),
        Ok(Err(error)) => format!("stop failed: {error}"),
        Err(error) => format!("stop failed: {error}"),
    };
    agent.emit(
        &handle.service,
        &handle.instance_id,
        "orphan-stopped",
        &format!(
            "pid {} (release {}) ran without a slot ({found_by}); {how}",
            handle.pid, handle.release
        ),
    );
    agent.forget_instance(&handle.instance_id);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn handle() -> InstanceHandle {
        InstanceHandle {
            project: "p-e".into(),
            service: "web".into(),
            index: 3,
            instance_id: "web.3".into(),
            release: 1,
            pid: 11,
            start_time: 5,
            pgid: 11,
            shim_pid: 10,
            shim_start_time: 4,
            run_dir: PathBuf::from("/s/run/web.3"),
            log_path: PathBuf::from("/s/logs/web.3.log"),
            cgroup: None,
            user: "u".into(),
            uid: 1,
            gid: 1,
            started_at_unix_ms: 0,
            secrets_dir: None,
        }
    }

    fn observed(running: bool) -> Observed {
        Observed {
            handle: handle(),
            running,
        }
    }

    const RECORDED: Recorded = Recorded {
        port: 4000,
        restarts: 2,
    };

    #[test]
    fn a_running_instance_is_adopted_whatever_the_store_says() {
        // Recorded: port and restarts from the store.
        assert_eq!(
            decide(observed(true), Some(RECORDED), Some(5000)),
            Disposition::Adopt(Box::new(Adopted {
                handle: handle(),
                port: 4000,
                restarts: 2
            }))
        );
        // Forgotten by the store (it was being stopped when the agent died): its own PORT.
        assert_eq!(
            decide(observed(true), None, Some(5000)),
            Disposition::Adopt(Box::new(Adopted {
                handle: handle(),
                port: 5000,
                restarts: 0
            }))
        );
        // No port to be found: it cannot be watched, so it is stopped, never ignored.
        assert!(matches!(
            decide(observed(true), None, None),
            Disposition::Stop(_)
        ));
    }

    #[test]
    fn an_ended_instance_is_forgotten_once() {
        assert_eq!(
            decide(observed(false), Some(RECORDED), None),
            Disposition::Ended
        );
        assert_eq!(decide(observed(false), None, None), Disposition::Nothing);
    }
}
