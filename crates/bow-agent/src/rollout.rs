//! How a deploy replaces instances: rolling (`max_surge` new instances healthy, then as many
//! old ones drained and stopped), blue-green (the whole new set healthy, one switch of the
//! edge, the old set drained), waiting for new instances to be healthy, and the automatic
//! rollback of a deploy that failed (the old release at full strength again before the new
//! instances leave the edge). The engine that picks one is `deploy.rs`.

use bow_reconcile::EventKind;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bow_spec::Service;
use bow_store::ReleaseStatus;

use crate::agent::{Agent, now_ms};
use crate::api::{DeployFailure, Health, Phase};
use crate::deploy::{LAST_LINES, POLL, start_slots, stop};
use crate::supervisor::SlotPlan;

/// Why an instance is not healthy, in a few words.
pub(crate) fn describe_failure(status: &crate::api::InstanceStatus) -> String {
    if let Some(error) = &status.last_error {
        return error.clone();
    }
    if let Some(exit) = &status.last_exit {
        return format!("exited: {exit}");
    }
    status.health.label().to_string()
}

/// The last lines an instance wrote, for a failed deploy's report.
pub(crate) fn last_lines(agent: &Agent, instance: &str) -> Vec<String> {
    agent
        .drivers
        .all()
        .flat_map(|driver| driver.log_tail(instance, LAST_LINES))
        .map(|line| line.text)
        .collect()
}

pub(crate) fn ids(name: &str, indexes: &[u32]) -> String {
    indexes
        .iter()
        .map(|i| format!("{name}.{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a deploy stopped: which new instance failed and how.
pub(crate) struct Failure {
    pub reason: String,
    pub instance: Option<String>,
}

/// Waits until every slot in `indexes` is healthy; fails at the first one that exits, cannot
/// start, fails its checks, or is not healthy by the deadline.
pub(crate) async fn wait_healthy(
    agent: &Agent,
    name: &str,
    indexes: &[u32],
    timeout: Duration,
) -> std::result::Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + timeout;
    // Restarts counted before the wait (an adopted instance carries its own) are not failures.
    let restarts_before: BTreeMap<u32, u32> = {
        let inner = agent.lock();
        indexes
            .iter()
            .filter_map(|i| Some((*i, inner.slot(name, *i)?.status.restarts)))
            .collect()
    };
    loop {
        let mut pending = None;
        {
            let inner = agent.lock();
            for index in indexes {
                let id = format!("{name}.{index}");
                let Some(slot) = inner.slot(name, *index) else {
                    return Err(Failure {
                        reason: format!("{id} was removed"),
                        instance: None,
                    });
                };
                let status = &slot.status;
                if status.health == Health::Healthy {
                    continue;
                }
                let failed = status.restarts > restarts_before.get(index).copied().unwrap_or(0)
                    || status.last_exit.is_some()
                    || matches!(
                        status.health,
                        Health::Failed
                            | Health::Unhealthy
                            | Health::Backoff
                            | Health::CrashLooping
                            | Health::Stopped
                    );
                if failed {
                    let what = if status.last_exit.is_some() {
                        "exited before it was healthy"
                    } else if status.health == Health::Failed {
                        "could not start"
                    } else {
                        "failed its health check"
                    };
                    return Err(Failure {
                        reason: format!("{id} {what}: {}", describe_failure(status)),
                        instance: Some(id),
                    });
                }
                pending.get_or_insert(id);
            }
        }
        let Some(pending) = pending else {
            return Ok(());
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Failure {
                reason: format!(
                    "{pending} was not healthy within {}",
                    bow_spec::units::Duration(timeout)
                ),
                instance: Some(pending),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Rolling: `max_surge` new instances at a time; each batch healthy (and so in the edge)
/// before as many old ones are drained and stopped.
pub(crate) async fn rolling(
    agent: &Arc<Agent>,
    name: &str,
    definition: &Arc<Service>,
    release: i64,
    stale: Vec<u32>,
) -> std::result::Result<(), Failure> {
    let replicas = definition.replicas as usize;
    let surge = definition.deploy.max_surge.max(1) as usize;
    let timeout = definition.deploy.timeout.as_std();
    let mut old = stale;
    // New instances already running (an interrupted deploy's, adopted) count once healthy.
    let present: Vec<u32> = agent
        .lock()
        .services
        .get(name)
        .map(|r| {
            r.slots
                .keys()
                .filter(|i| !old.contains(i))
                .copied()
                .collect()
        })
        .unwrap_or_default();
    let mut ready = present.len();
    let plan = SlotPlan {
        release,
        definition: definition.clone(),
        routable: true,
    };
    agent.emit(
        name,
        "",
        EventKind::Deploying,
        &format!(
            "release {release} (rolling, {replicas} instances, {} to replace)",
            old.len()
        ),
    );
    if !present.is_empty() {
        agent.set_phase(name, Phase::Health, ids(name, &present));
        wait_healthy(agent, name, &present, timeout).await?;
    }
    while ready < replicas || !old.is_empty() {
        let batch = surge.min(replicas.saturating_sub(ready));
        if batch > 0 {
            let started = start_slots(agent, name, batch, &plan);
            agent.set_phase(name, Phase::Starting, ids(name, &started));
            agent.set_phase(name, Phase::Health, ids(name, &started));
            wait_healthy(agent, name, &started, timeout).await?;
            ready += batch;
        }
        let retire = if ready >= replicas {
            old.len()
        } else {
            batch.min(old.len())
        };
        let retiring: Vec<u32> = old.drain(..retire).collect();
        if !retiring.is_empty() {
            agent.set_phase(name, Phase::Draining, ids(name, &retiring));
            stop(agent, name, &retiring).await;
        }
    }
    // More new instances than replicas (an interrupted deploy to another replica count).
    let extra: Vec<u32> = present
        .iter()
        .rev()
        .take(ready.saturating_sub(replicas))
        .copied()
        .collect();
    if !extra.is_empty() {
        agent.set_phase(name, Phase::Draining, ids(name, &extra));
        stop(agent, name, &extra).await;
    }
    Ok(())
}

/// Recreate, for what cannot run twice at once (a postgres server and its data directory):
/// the old instances stop, then the new ones start and must become healthy. A new instance
/// that fails is stopped before the rollback starts the old release again.
pub(crate) async fn recreate(
    agent: &Arc<Agent>,
    name: &str,
    definition: &Arc<Service>,
    release: i64,
    stale: Vec<u32>,
) -> std::result::Result<(), Failure> {
    let replicas = definition.replicas as usize;
    agent.emit(
        name,
        "",
        EventKind::Deploying,
        &format!("release {release} (recreate: the old instance stops before the new one starts)"),
    );
    agent.set_phase(name, Phase::Draining, ids(name, &stale));
    stop(agent, name, &stale).await;
    let plan = SlotPlan {
        release,
        definition: definition.clone(),
        routable: true,
    };
    let present = agent.lock().services.get(name).map_or(0, |r| r.slots.len());
    let started = start_slots(agent, name, replicas.saturating_sub(present), &plan);
    agent.set_phase(name, Phase::Health, ids(name, &started));
    if let Err(failure) =
        wait_healthy(agent, name, &started, definition.deploy.timeout.as_std()).await
    {
        stop(agent, name, &started).await;
        return Err(failure);
    }
    Ok(())
}

/// Blue-green: the whole new set healthy while held out of the edge, one atomic switch, then
/// the old set drained and stopped.
pub(crate) async fn blue_green(
    agent: &Arc<Agent>,
    name: &str,
    definition: &Arc<Service>,
    release: i64,
    stale: Vec<u32>,
) -> std::result::Result<(), Failure> {
    let replicas = definition.replicas as usize;
    agent.emit(
        name,
        "",
        EventKind::Deploying,
        &format!("release {release} (blue-green, {replicas} instances)"),
    );
    // New instances already running (an interrupted deploy) wait for the switch too.
    let current: Vec<u32> = {
        let mut inner = agent.lock();
        let Some(runtime) = inner.services.get_mut(name) else {
            return Ok(());
        };
        let mut current = Vec::new();
        for (index, slot) in runtime.slots.iter_mut() {
            if !stale.contains(index) {
                slot.routable = false;
                current.push(*index);
            }
        }
        current
    };
    agent.refresh_routes();
    let plan = SlotPlan {
        release,
        definition: definition.clone(),
        routable: false,
    };
    let mut green = current;
    let missing = replicas.saturating_sub(green.len());
    let started = start_slots(agent, name, missing, &plan);
    agent.set_phase(name, Phase::Starting, ids(name, &started));
    green.extend(started);
    agent.set_phase(name, Phase::Health, ids(name, &green));
    wait_healthy(agent, name, &green, definition.deploy.timeout.as_std()).await?;
    agent.set_phase(name, Phase::Switching, "");
    {
        let mut inner = agent.lock();
        if let Some(runtime) = inner.services.get_mut(name) {
            for (index, slot) in runtime.slots.iter_mut() {
                slot.routable = green.contains(index);
            }
        }
    }
    agent.refresh_routes();
    agent.emit(
        name,
        "",
        EventKind::Switched,
        &format!("edge: {} → {}", ids(name, &stale), ids(name, &green)),
    );
    agent.set_phase(name, Phase::Draining, ids(name, &stale));
    stop(agent, name, &stale).await;
    Ok(())
}

/// A deploy failed: the old release goes back to full strength, the new instances are
/// drained and removed, the release is recorded failed and the applied spec goes back to
/// the old definition.
pub(crate) async fn roll_back(agent: &Arc<Agent>, name: &str, release: i64, failure: Failure) {
    agent.set_phase(name, Phase::RollingBack, failure.reason.clone());
    let last_lines = failure
        .instance
        .as_deref()
        .map(|id| last_lines(agent, id))
        .unwrap_or_default();
    agent.emit(
        name,
        failure.instance.as_deref().unwrap_or(""),
        EventKind::DeployFailed,
        &format!("release {release}: {}", failure.reason),
    );
    let rows = agent.store().releases(Some(name)).unwrap_or_default();
    let live = rows
        .iter()
        .rev()
        .find(|r| r.status == ReleaseStatus::Live && r.number != release);
    // What the old release runs: its recorded definition, else what an old instance runs.
    let old = {
        let inner = agent.lock();
        let running_old = inner.services.get(name).and_then(|r| {
            r.slots
                .values()
                .filter(|s| s.release != release)
                .max_by_key(|s| s.release)
                .map(|s| (s.release, s.definition.clone()))
        });
        live.map(|r| (r.number, Arc::new(r.definition.clone())))
            .or(running_old)
    };
    let Some((old_release, old_definition)) = old else {
        agent.set_failed(
            name,
            DeployFailure {
                reason: failure.reason,
                instance: failure.instance,
                last_lines,
                serving: None,
            },
        );
        return;
    };
    let (new, remaining_old): (Vec<u32>, usize) = {
        let inner = agent.lock();
        let slots = inner.services.get(name).map(|r| &r.slots);
        let new = slots
            .map(|s| {
                s.iter()
                    .filter(|(_, slot)| slot.release == release)
                    .map(|(i, _)| *i)
                    .collect()
            })
            .unwrap_or_default();
        let old = slots.map_or(0, |s| s.values().filter(|s| s.release != release).count());
        (new, old)
    };
    // New instances that never became healthy serve nothing: out at once.
    let (serving, failing): (Vec<u32>, Vec<u32>) = new.into_iter().partition(|index| {
        agent
            .lock()
            .slot(name, *index)
            .is_some_and(|s| s.status.health == Health::Healthy && s.routable)
    });
    stop(agent, name, &failing).await;
    let restore = (old_definition.replicas as usize).saturating_sub(remaining_old);
    if restore > 0 {
        let plan = SlotPlan {
            release: old_release,
            definition: old_definition.clone(),
            routable: true,
        };
        let started = start_slots(agent, name, restore, &plan);
        agent.set_phase(
            name,
            Phase::RollingBack,
            format!("restoring {}", ids(name, &started)),
        );
        if let Err(again) = wait_healthy(
            agent,
            name,
            &started,
            old_definition.deploy.timeout.as_std(),
        )
        .await
        {
            agent.emit(name, "", EventKind::RollbackDegraded, &again.reason);
        }
    }
    // Every old instance serves again before the new ones leave the edge.
    {
        let mut inner = agent.lock();
        if let Some(runtime) = inner.services.get_mut(name) {
            for slot in runtime.slots.values_mut() {
                if slot.release != release {
                    slot.routable = true;
                }
            }
        }
    }
    agent.refresh_routes();
    stop(agent, name, &serving).await;
    let reason = failure.reason.clone();
    let _ = agent.store().set_release_status(
        name,
        release,
        ReleaseStatus::Failed,
        Some(&reason),
        now_ms(),
    );
    // What is applied is the old definition again: a restarted agent must not retry.
    let applying = agent.applying_lock();
    let spec = {
        let mut inner = agent.lock();
        if let Some(runtime) = inner.services.get_mut(name) {
            runtime.release = old_release;
        }
        inner.spec.as_mut().map(|spec| {
            spec.services
                .insert(name.to_string(), old_definition.as_ref().clone());
            spec.clone()
        })
    };
    if let Some(spec) = spec {
        match agent.store().record_revision(&spec, now_ms()) {
            Ok(revision) => agent.lock().revision = revision,
            Err(error) => eprintln!("bow agent: cannot record the rolled-back spec: {error}"),
        }
    }
    drop(applying);
    agent.emit(
        name,
        "",
        EventKind::RolledBack,
        &format!("release {old_release} serves again; release {release} failed"),
    );
    agent.set_failed(
        name,
        DeployFailure {
            reason,
            instance: failure.instance,
            last_lines,
            serving: Some(old_release),
        },
    );
}
