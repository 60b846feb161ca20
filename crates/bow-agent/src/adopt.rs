//! Adoption: every instance that outlived a previous agent is accounted for. Each driver
//! lists what it finds (for processes: `run/*/state.json` verified by pid *and* start time,
//! and the process table for what no handle accounts for); listed instances are handed to
//! their slots, strays are stopped with an `orphan-stopped` event. A deploy that finds a live
//! instance where it wanted to start one stops that orphan the same way (`stop_orphan`)
//! instead of failing.

use bow_reconcile::EventKind;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bow_driver::{Driver, Found, Handle, Stray};

use crate::agent::Agent;
use crate::supervisor::Adopted;

/// One listed instance and whether it still runs.
type Observed = Found;

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
    let mut observed = Vec::new();
    let mut strays = Vec::new();
    for driver in agent.drivers.all() {
        let listing = driver.list().await;
        observed.extend(listing.instances);
        strays.extend(listing.strays.into_iter().map(|s| (driver.clone(), s)));
    }
    stop_strays(agent, strays).await;
    let mut adopted = BTreeMap::new();
    for found in observed {
        let handle = found.handle.clone();
        let driver = agent.drivers.for_handle(&handle).clone();
        let recorded = rows.get(handle.instance_id()).copied();
        let environ_port = found.running.then(|| driver.port_of(&handle)).flatten();
        match decide(found, recorded, environ_port) {
            Disposition::Adopt(instance) => {
                adopted.insert(handle.instance_id().to_string(), *instance);
            }
            Disposition::Stop(reason) => {
                agent.emit(
                    handle.service(),
                    handle.instance_id(),
                    EventKind::Stopping,
                    &reason,
                );
                stop_handle(agent, &handle).await;
            }
            Disposition::Ended => {
                let message = match driver.exit_status(&handle) {
                    Some(exit) => format!("{exit} while no agent was running"),
                    _ => "ended while no agent was running".to_string(),
                };
                agent.emit(
                    handle.service(),
                    handle.instance_id(),
                    EventKind::Exited,
                    &message,
                );
                agent.forget_instance(handle.instance_id());
            }
            Disposition::Nothing => {}
        }
    }
    adopted
}

/// Stops what runs that no handle accounts for, one `orphan-stopped` event per instance id.
async fn stop_strays(agent: &Arc<Agent>, strays: Vec<(Arc<dyn Driver>, Stray)>) {
    let mut tasks = Vec::new();
    for (driver, stray) in strays {
        let id = stray.instance_id.clone();
        let service = id
            .rsplit_once('.')
            .map_or(id.as_str(), |(s, _)| s)
            .to_string();
        let timeout = agent
            .service_spec(&service)
            .map_or(Duration::from_secs(10), |s| s.stop_timeout.as_std());
        let agent = agent.clone();
        tasks.push(tokio::spawn(async move {
            let description = stray.description.clone();
            driver.stop_stray(stray, timeout).await;
            agent.emit(
                &service,
                &id,
                EventKind::OrphanStopped,
                &format!("{description} (started as the previous agent died); stopped"),
            );
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// The instance that runs under `id` now, whichever driver runs it.
pub(crate) fn live_handle(agent: &Agent, id: &str) -> Option<Handle> {
    agent.drivers.all().find_map(|driver| driver.live(id))
}

/// Stops an instance that runs under an id no slot holds (an orphan a deploy found where it
/// wanted to start one), with an `orphan-stopped` event.
pub(crate) async fn stop_orphan(agent: &Arc<Agent>, handle: &Handle, found_by: &str) {
    {
        let mut inner = agent.lock();
        if inner
            .adopted
            .get(handle.instance_id())
            .is_some_and(|a| a.handle.same_as(handle))
        {
            inner.adopted.remove(handle.instance_id());
        }
    }
    let how = stop_outcome(agent, handle).await;
    agent.emit(
        handle.service(),
        handle.instance_id(),
        EventKind::OrphanStopped,
        &format!(
            "{handle} (release {}) ran without a slot ({found_by}); {how}",
            handle.release()
        ),
    );
    agent.forget_instance(handle.instance_id());
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
                    .is_some_and(|s| s.services.contains_key(a.handle.service()));
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
            adopted.handle.service(),
            adopted.handle.instance_id(),
            EventKind::Stopping,
            "no longer in the applied file",
        );
        stop_handle(agent, &adopted.handle).await;
        agent.forget_instance(adopted.handle.instance_id());
    }
}

/// Stops an instance that has no slot.
pub async fn stop_handle(agent: &Arc<Agent>, handle: &Handle) {
    let message = stop_outcome(agent, handle).await;
    agent.emit(
        handle.service(),
        handle.instance_id(),
        EventKind::Stopped,
        &message,
    );
}

/// Stops `handle` through its driver within its service's stop timeout; what happened, for an
/// event (`stopped`, `stopped: <exit>`, `stop failed: <why>`).
async fn stop_outcome(agent: &Arc<Agent>, handle: &Handle) -> String {
    let timeout = agent
        .service_spec(handle.service())
        .map_or(Duration::from_secs(10), |s| s.stop_timeout.as_std());
    match agent.drivers.for_handle(handle).stop(handle, timeout).await {
        Ok(outcome) => outcome
            .exit()
            .map_or_else(|| "stopped".to_string(), |exit| format!("stopped: {exit}")),
        Err(error) => format!("stop failed: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> Handle {
        Handle::process(bow_driver::fake::handle_for_tests("web", 3, 11))
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

#[cfg(test)]
mod through_the_driver {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    use bow_driver::Driver;
    use bow_driver::fake::{DriverCall, FakeProcessDriver};

    use crate::fake_world::FakeWorld;

    #[tokio::test]
    async fn an_instance_no_applied_file_wants_is_stopped_at_start() {
        let driver = Arc::new(FakeProcessDriver::new());
        let mut spec = bow_driver::InstanceSpec::new(
            "p-e",
            "old",
            1,
            vec!["old-app".into()],
            Path::new("/run/p"),
            Path::new("/log/p"),
        );
        spec.env = BTreeMap::from([("PORT".to_string(), "4100".to_string())]);
        let old = driver.start(spec).await.unwrap();
        let world = FakeWorld::start(driver).await;
        assert!(world.driver.running().is_empty(), "{}", world.events());
        assert!(world.driver.calls().contains(&DriverCall::List));
        let events = world.events();
        assert!(
            events.contains("old.1 stopping no longer in the applied file"),
            "{events}"
        );
        assert!(
            events.contains("old.1 stopped stopped: exited with code 0"),
            "{events}"
        );
        assert!(!world.driver.is_running(&old));
    }

    fn running_spec(service: &str, index: u32, port: u16) -> bow_driver::InstanceSpec {
        let mut spec = bow_driver::InstanceSpec::new(
            "p-e",
            service,
            index,
            vec!["app".into()],
            Path::new("/run/p"),
            Path::new("/log/p"),
        );
        spec.env = BTreeMap::from([("PORT".to_string(), port.to_string())]);
        spec
    }

    #[tokio::test]
    async fn what_a_previous_agent_left_running_is_adopted_not_started_again() {
        let driver = Arc::new(FakeProcessDriver::new());
        let one = driver.start(running_spec("worker", 1, 4101)).await.unwrap();
        let two = driver.start(running_spec("worker", 2, 4102)).await.unwrap();
        let applied = "project: p\nservices:\n  worker:\n    command: app\n    replicas: 2\n";
        let world = FakeWorld::restart(driver, Some(applied)).await;
        world
            .until("both adopted", |w| {
                w.saw("worker.1", "adopted") && w.saw("worker.2", "adopted")
            })
            .await;
        let starts = world
            .driver
            .calls()
            .iter()
            .filter(|c| matches!(c, DriverCall::Start { .. }))
            .count();
        assert_eq!(starts, 2, "only the two the test started");
        assert_eq!(world.driver.running(), [one.clone(), two]);
        assert!(
            world
                .events()
                .contains(&format!("worker.1 adopted {one} port 4101 (still running")),
            "{}",
            world.events()
        );
    }

    #[tokio::test]
    async fn an_adopted_instance_above_the_replicas_is_stopped() {
        let driver = Arc::new(FakeProcessDriver::new());
        driver.start(running_spec("worker", 1, 4101)).await.unwrap();
        let extra = driver.start(running_spec("worker", 2, 4102)).await.unwrap();
        let applied = "project: p\nservices:\n  worker:\n    command: app\n";
        let world = FakeWorld::restart(driver, Some(applied)).await;
        world
            .until("worker.2 stopped", |w| !w.driver.is_running(&extra))
            .await;
        assert_eq!(world.driver.running().len(), 1, "{}", world.events());
        assert!(world.saw("worker.1", "adopted"), "{}", world.events());
    }
}
