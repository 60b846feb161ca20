//! The deploy engine: each service's starter converges the running slots on the target
//! release (`releases.rs` opens it). A first release starts its replicas; a change the
//! instances can take in place (replicas, checks, timeouts) updates them without a restart;
//! anything else is a deploy, rolling (new instance healthy → in the edge → an old one
//! drained and stopped, `max_surge` at a time) or blue-green (the whole new set healthy, one
//! atomic switch of the edge, the old set drained). A new instance that exits, fails its
//! checks or is not healthy within `deploy.timeout` stops the deploy: the old release is
//! restored to full strength before the new instances are drained and removed, the release
//! is recorded as failed and the applied spec goes back to the old definition (a new
//! revision), so a restarted agent does not retry.
//!
//! Instances carry their release number in their handle, so an agent killed mid-deploy finds
//! old and new instances on restart and finishes (or rolls back) the same deploy.

use bow_reconcile::EventKind;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bow_plan::ChangeClass;
use bow_spec::{Service, Strategy};
use bow_store::ReleaseStatus;

use crate::agent::{Agent, Slot, now_ms};
use crate::api::{DeployFailure, Health, Phase};
use crate::rollout::{blue_green, describe_failure, ids, last_lines, recreate, roll_back, rolling};
use crate::supervisor::{self, SlotPlan};

/// How often a deploy looks at its instances.
pub(crate) const POLL: Duration = Duration::from_millis(20);
/// Log lines shown for an instance that failed a deploy.
pub(crate) const LAST_LINES: usize = 10;

/// The definition and release number a service converges on.
fn target(agent: &Agent, name: &str) -> Option<(Arc<Service>, i64)> {
    let inner = agent.lock();
    let definition = inner.spec.as_ref()?.services.get(name)?.clone();
    let release = inner.services.get(name)?.release;
    Some((Arc::new(definition), release))
}

/// A slot that must be replaced (not updated in place) to run `definition`.
fn is_stale(slot: &Slot, definition: &Service, release: i64) -> bool {
    slot.release != release
        && slot.definition.as_ref() != definition
        && bow_plan::classify_service_change(&slot.definition, definition)
            == Some(ChangeClass::Replace)
}

/// Waits for the service's dependencies, then brings its slots to the target release.
pub(crate) async fn converge(agent: Arc<Agent>, name: String) {
    // Instances found running at start get their slots at once, before any wait: what runs
    // is what the deploy below continues from, and their ids stay visibly taken.
    if let Some((definition, release)) = target(&agent, &name) {
        take_adopted(&agent, &name, &definition, release);
    }
    agent.set_phase(&name, Phase::Waiting, "");
    loop {
        let waiting: Vec<String> = {
            let inner = agent.lock();
            let Some(service) = inner.spec.as_ref().and_then(|s| s.services.get(&name)) else {
                return;
            };
            // A dependency is ready when it is healthy and its own deploy of this apply (if
            // any) has finished: dependencies deploy before dependants.
            service
                .depends_on
                .iter()
                .filter(|d| {
                    !agent.service_healthy(&inner, d)
                        || inner.progress.get(*d).is_some_and(|p| !p.phase.finished())
                })
                .cloned()
                .collect()
        };
        if waiting.is_empty() {
            break;
        }
        agent.set_phase(&name, Phase::Waiting, waiting.join(", "));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some((definition, release)) = target(&agent, &name) else {
        return;
    };
    if definition.python.is_some() {
        agent.set_phase(&name, Phase::Building, "python environment");
        if let Err(reason) = agent.build_venv(&name, &definition).await {
            agent.set_failed(
                &name,
                DeployFailure {
                    reason: format!("python environment: {reason}"),
                    instance: None,
                    last_lines: Vec::new(),
                    serving: None,
                },
            );
            return;
        }
    }
    if matches!(&definition.workload, bow_spec::Workload::Container(c) if c.build.is_some()) {
        agent.set_phase(&name, Phase::Building, "image");
        if let Err(reason) = agent.build_image(&name, &definition).await {
            agent.set_failed(
                &name,
                DeployFailure {
                    reason,
                    instance: None,
                    last_lines: Vec::new(),
                    serving: None,
                },
            );
            return;
        }
    }
    if crate::postgres::of(&definition).is_some() {
        agent.set_phase(&name, Phase::Building, "postgres data directory");
        match crate::postgres::prepare(&agent.state_dir, &name, &definition, agent.root).await {
            Ok(Some(did)) => agent.emit(&name, "", EventKind::Built, &did),
            Ok(None) => {}
            Err(reason) => {
                agent.emit(&name, "", EventKind::DeployFailed, &reason);
                agent.set_failed(
                    &name,
                    DeployFailure {
                        reason,
                        instance: None,
                        last_lines: Vec::new(),
                        serving: None,
                    },
                );
                return;
            }
        }
    }
    // Instances whose release differs only in what the agent itself does (checks, timeouts,
    // replicas) take the new definition as they run.
    let stale: Vec<u32> = {
        let mut inner = agent.lock();
        let Some(runtime) = inner.services.get_mut(&name) else {
            return;
        };
        let mut stale = Vec::new();
        for (index, slot) in runtime.slots.iter_mut() {
            if is_stale(slot, &definition, release) {
                stale.push(*index);
            } else if slot.release != release {
                slot.release = release;
                slot.definition = definition.clone();
                slot.status.release = release;
                slot.control.send_modify(|c| c.reconfigure += 1);
            }
        }
        stale
    };
    if stale.is_empty() {
        scale(&agent, &name, &definition, release).await;
        settle(&agent, &name, &definition, release).await;
        return;
    }
    let outcome = match definition.deploy.strategy {
        // Two servers cannot share a data directory: the old one stops first.
        _ if crate::postgres::of(&definition).is_some() => {
            recreate(&agent, &name, &definition, release, stale).await
        }
        Strategy::Rolling => rolling(&agent, &name, &definition, release, stale).await,
        Strategy::BlueGreen => blue_green(&agent, &name, &definition, release, stale).await,
    };
    match outcome {
        Ok(()) => went_live(&agent, &name, release),
        Err(failure) => roll_back(&agent, &name, release, failure).await,
    }
}

/// Hands instances found running at start to slots, each with the release it runs.
fn take_adopted(agent: &Arc<Agent>, name: &str, definition: &Arc<Service>, release: i64) {
    let releases: BTreeMap<i64, Arc<Service>> = agent
        .store()
        .releases(Some(name))
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.number, Arc::new(r.definition)))
        .collect();
    let mut inner = agent.lock();
    let ids: Vec<String> = inner
        .adopted
        .iter()
        .filter(|(_, a)| a.handle.service() == name)
        .map(|(id, _)| id.clone())
        .collect();
    for id in ids {
        let Some(adopted) = inner.adopted.remove(&id) else {
            continue;
        };
        let index = adopted.handle.index();
        // From a bow without releases: it runs what is applied.
        let (slot_release, slot_definition) = match releases.get(&(adopted.handle.release() as i64))
        {
            Some(found) => (adopted.handle.release() as i64, found.clone()),
            None => (release, definition.clone()),
        };
        let Some(runtime) = inner.services.get_mut(name) else {
            return;
        };
        if runtime.slots.contains_key(&index) || runtime.stopping.contains(&index) {
            // Its id is taken by a slot already: it cannot be adopted, and must not run on
            // unseen.
            let agent = agent.clone();
            tokio::spawn(async move {
                crate::adopt::stop_orphan(
                    &agent,
                    &adopted.handle,
                    "its id is taken by another instance",
                )
                .await;
            });
            continue;
        }
        let slot = supervisor::spawn(
            agent.clone(),
            name,
            index,
            Some(adopted),
            SlotPlan {
                release: slot_release,
                definition: slot_definition,
                routable: true,
            },
        );
        runtime.slots.insert(index, slot);
    }
}

/// Starts `count` new slots; returns their indexes (the lowest free ones).
pub(crate) fn start_slots(
    agent: &Arc<Agent>,
    name: &str,
    count: usize,
    plan: &SlotPlan,
) -> Vec<u32> {
    let mut inner = agent.lock();
    let adopted: std::collections::BTreeSet<String> = inner.adopted.keys().cloned().collect();
    let Some(runtime) = inner.services.get_mut(name) else {
        return Vec::new();
    };
    let mut orphans = Vec::new();
    let mut started = Vec::new();
    for _ in 0..count {
        // Never an id whose handle is live: a process there that no slot holds is an orphan,
        // stopped (its id stays taken until it is gone) while the deploy goes on with the next id.
        let index = free_index(
            |i| runtime.slots.contains_key(&i) || runtime.stopping.contains(&i),
            |i| {
                let id = format!("{name}.{i}");
                if adopted.contains(&id) {
                    return true;
                }
                let Some(handle) = crate::adopt::live_handle(agent, &id) else {
                    return false;
                };
                orphans.push((i, handle));
                true
            },
        );
        for (orphan_index, handle) in orphans.drain(..) {
            runtime.stopping.insert(orphan_index);
            let agent = agent.clone();
            let name = name.to_string();
            tokio::spawn(async move {
                crate::adopt::stop_orphan(
                    &agent,
                    &handle,
                    "found where a new instance was to start",
                )
                .await;
                if let Some(runtime) = agent.lock().services.get_mut(&name) {
                    runtime.stopping.remove(&orphan_index);
                }
            });
        }
        let slot = supervisor::spawn(
            agent.clone(),
            name,
            index,
            None,
            SlotPlan {
                release: plan.release,
                definition: plan.definition.clone(),
                routable: plan.routable,
            },
        );
        runtime.slots.insert(index, slot);
        started.push(index);
    }
    started
}

/// The lowest instance number that no slot uses (`used`) and no process holds (`held`, asked
/// only of numbers no slot uses).
fn free_index(used: impl Fn(u32) -> bool, mut held: impl FnMut(u32) -> bool) -> u32 {
    (1..u32::MAX)
        .find(|i| !used(*i) && !held(*i))
        .unwrap_or(u32::MAX)
}

/// Takes slots out of the service and stops them (drained first); waits until they are gone.
pub(crate) async fn stop(agent: &Arc<Agent>, name: &str, indexes: &[u32]) {
    let slots: BTreeMap<u32, Slot> = {
        let mut inner = agent.lock();
        let Some(runtime) = inner.services.get_mut(name) else {
            return;
        };
        let slots: BTreeMap<u32, Slot> = indexes
            .iter()
            .filter_map(|i| runtime.slots.remove(i).map(|s| (*i, s)))
            .collect();
        // Their ids stay taken from this moment until they are gone.
        runtime.stopping.extend(slots.keys().copied());
        slots
    };
    agent.refresh_routes();
    // A task of its own: a deploy interrupted by a newer apply (its task aborted) still
    // finishes the stop and frees the ids.
    let stopping = {
        let agent = agent.clone();
        let name = name.to_string();
        tokio::spawn(async move { agent.stop_slots(&name, slots).await })
    };
    let _ = stopping.await;
}

/// Makes the number of current slots match `replicas`: new ones start, extra ones (newest
/// first) stop.
async fn scale(agent: &Arc<Agent>, name: &str, definition: &Arc<Service>, release: i64) {
    let replicas = definition.replicas as usize;
    let current: Vec<u32> = agent
        .lock()
        .services
        .get(name)
        .map(|r| r.slots.keys().copied().collect())
        .unwrap_or_default();
    if current.len() < replicas {
        let plan = SlotPlan {
            release,
            definition: definition.clone(),
            routable: true,
        };
        let started = start_slots(agent, name, replicas - current.len(), &plan);
        agent.set_phase(name, Phase::Starting, ids(name, &started));
    } else if current.len() > replicas {
        // A postgres service loses replicas, never its primary (wherever a switchover put it).
        let primary: Option<u32> = {
            let inner = agent.lock();
            inner.services.get(name).and_then(|r| {
                r.slots
                    .iter()
                    .find(|(_, s)| s.status.database.as_ref().is_some_and(|d| d.is_primary()))
                    .map(|(i, _)| *i)
            })
        };
        let extra: Vec<u32> = current
            .iter()
            .rev()
            .filter(|i| Some(**i) != primary)
            .take(current.len() - replicas)
            .copied()
            .collect();
        agent.set_phase(name, Phase::Draining, ids(name, &extra));
        let agent = agent.clone();
        let service = name.to_string();
        tokio::spawn(async move { stop(&agent, &service, &extra).await });
    }
}

/// After a first release or an in-place change: waits until every instance is healthy, then
/// records the release live. A first release has nothing to roll back to: when it is not
/// healthy within its deploy timeout it is reported failed and its instances keep being
/// retried; it goes live when they recover.
async fn settle(agent: &Arc<Agent>, name: &str, definition: &Arc<Service>, release: i64) {
    let deadline = tokio::time::Instant::now() + definition.deploy.timeout.as_std();
    let mut reported = false;
    loop {
        let (healthy, worst) = {
            let inner = agent.lock();
            let Some(runtime) = inner.services.get(name) else {
                return;
            };
            let healthy = runtime
                .slots
                .values()
                .filter(|s| s.status.health == Health::Healthy)
                .count();
            let worst = runtime
                .slots
                .values()
                .filter(|s| s.status.health != Health::Healthy)
                .max_by_key(|s| s.status.health)
                .map(|s| (s.status.id.clone(), describe_failure(&s.status)));
            (healthy, worst)
        };
        if healthy >= definition.replicas as usize {
            went_live(agent, name, release);
            return;
        }
        agent.set_phase(
            name,
            Phase::Health,
            format!("{healthy} of {} healthy", definition.replicas),
        );
        if !reported && tokio::time::Instant::now() >= deadline {
            reported = true;
            let (instance, reason) = worst.unwrap_or_default();
            let reason = format!(
                "not healthy within {}: {instance} {reason}",
                definition.deploy.timeout
            );
            let _ = agent.store().set_release_status(
                name,
                release,
                ReleaseStatus::Failed,
                Some(&reason),
                now_ms(),
            );
            agent.emit(name, &instance, EventKind::DeployFailed, &reason);
            let last_lines = last_lines(agent, &instance);
            agent.set_failed(
                name,
                DeployFailure {
                    reason,
                    instance: Some(instance),
                    last_lines,
                    serving: None,
                },
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records the release live (the one before it superseded) and the deploy done.
fn went_live(agent: &Arc<Agent>, name: &str, release: i64) {
    let at = now_ms();
    let rows = agent.store().releases(Some(name)).unwrap_or_default();
    let Some(row) = rows.iter().find(|r| r.number == release) else {
        return;
    };
    if row.status != ReleaseStatus::Live {
        let store = agent.store();
        let _ = store.set_release_status(name, release, ReleaseStatus::Live, None, at);
        for older in rows
            .iter()
            .filter(|r| r.number != release && r.status == ReleaseStatus::Live)
        {
            let _ =
                store.set_release_status(name, older.number, ReleaseStatus::Superseded, None, at);
        }
        drop(store);
        let took = at - row.created_at_ms;
        agent.emit(
            name,
            "",
            EventKind::Deployed,
            &format!("release {release} live ({}, {} ms)", row.strategy, took),
        );
    }
    agent.set_phase(name, Phase::Done, format!("release {release} live"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_instance_takes_the_lowest_number_nothing_holds() {
        let used = |i: u32| [1, 2].contains(&i);
        assert_eq!(free_index(used, |_| false), 3);
        // web.3 is held by a process no slot has (an orphan): the next number, and every
        // number a slot uses is never asked about.
        let mut asked = Vec::new();
        let index = free_index(used, |i| {
            asked.push(i);
            i == 3
        });
        assert_eq!(index, 4);
        assert_eq!(asked, [3, 4]);
    }
}
