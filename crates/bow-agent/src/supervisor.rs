//! One instance slot's life: start, watch (exit as the driver notifies it, health probes),
//! restart with backoff, stop. Instances are reached through their driver only. One task
//! per slot; it reports through the agent's status table and events.

use bow_reconcile::EventKind;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use bow_driver::{Handle, InstanceExit, StopOutcome};
use bow_spec::Service;

use crate::agent::{Agent, Slot};
use crate::api::{Health, InstanceStatus};
use crate::instance_spec::{self, InstanceContext};
use bow_reconcile::backoff::{self, Backoff};

/// What the agent asks of a slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Control {
    pub stop: bool,
    /// Bumped to ask for one restart.
    pub restart_generation: u64,
    /// Bumped when the slot's definition changed in place (checks, timeouts): the process
    /// keeps running and is watched again with the new definition.
    pub reconfigure: u64,
    /// Stopped and kept stopped until cleared (a backup or restore of the service's volumes,
    /// a restore its dependencies go through): `Agent::hold`.
    pub held: bool,
}

/// An instance found running when the agent started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    pub handle: Handle,
    pub port: u16,
    pub restarts: u32,
}

/// The restart generation a slot's current process answers to.
pub fn restarted_generation(status: &InstanceStatus) -> u64 {
    status.generation
}

/// What a new slot runs.
pub(crate) struct SlotPlan {
    pub release: i64,
    pub definition: Arc<Service>,
    /// False holds the instance out of the edge (a blue-green set before the switch).
    pub routable: bool,
}

/// Creates a slot and its supervising task. The caller inserts it into the service's slots
/// before the task first looks (the agent's lock is held around both).
pub(crate) fn spawn(
    agent: Arc<Agent>,
    service: &str,
    index: u32,
    adopted: Option<Adopted>,
    plan: SlotPlan,
) -> Slot {
    let (control, receiver) = watch::channel(Control::default());
    let status = InstanceStatus {
        id: format!("{service}.{index}"),
        service: service.to_string(),
        index,
        pid: None,
        port: None,
        endpoint: None,
        kind: Some(plan.definition.workload.kind().to_string()),
        health: Health::Starting,
        restarts: adopted.as_ref().map_or(0, |a| a.restarts),
        started_at_ms: None,
        uptime_ms: None,
        last_exit: None,
        last_error: None,
        user: None,
        log_path: None,
        release: plan.release,
        database: None,
        generation: 0,
    };
    let task = tokio::spawn(run(
        agent,
        service.to_string(),
        index,
        receiver,
        adopted,
        plan.definition.clone(),
    ));
    Slot {
        status,
        control,
        task: Some(task),
        release: plan.release,
        definition: plan.definition,
        routable: plan.routable,
    }
}

enum Ending {
    Stop,
    /// The definition changed in place: watch the same process again.
    Reconfigure,
    Restart,
    /// Held: stopped until the hold is lifted, then started afresh.
    Hold,
    Exited(Option<InstanceExit>),
    Unhealthy(String),
}

async fn run(
    agent: Arc<Agent>,
    service: String,
    index: u32,
    mut control: watch::Receiver<Control>,
    adopted: Option<Adopted>,
    first_definition: Arc<Service>,
) {
    let id = format!("{service}.{index}");
    let mut backoff = Backoff::default();
    let mut restarts = adopted.as_ref().map_or(0, |a| a.restarts);
    let mut pending = adopted;
    let mut generation = control.borrow().restart_generation;
    let mut reconfigured = control.borrow().reconfigure;
    // The running process, watched again after an in-place change of the definition.
    let mut resume: Option<(Handle, u16)> = None;
    let mut first_start = true;
    let mut reported_crash_loop = false;
    // The release this slot last served (was healthy) in: its program works.
    let mut served_release = None;
    // A restarted instance keeps its port while the port is free, so what talks to it directly
    // finds it again; one that never became healthy gets a fresh port.
    let mut slot_port: Option<u16> = pending.as_ref().map(|a| a.port);
    // The definition the slot last ran with (to stop a process it holds but no longer has a
    // definition for: the slot was taken out before its task first looked).
    let mut last_definition = first_definition;
    loop {
        let current = agent.slot_definition(&service, index);
        let Some((definition, release)) = current.filter(|_| !control.borrow().stop) else {
            // A process this slot holds but does not watch yet (adopted, or kept through an
            // in-place change) must not outlive the slot untracked: its id would stay taken by
            // a process nobody sees.
            let held = pending
                .take()
                .map(|adopted| {
                    agent.emit(
                        &service,
                        &id,
                        EventKind::Adopted,
                        &format!(
                            "{} port {} (still running from a previous agent; not wanted, stopping it)",
                            adopted.handle, adopted.port
                        ),
                    );
                    adopted.handle
                })
                .or_else(|| resume.take().map(|(handle, _)| handle));
            if let Some(handle) = held {
                stop_instance(
                    &agent,
                    &last_definition,
                    &service,
                    index,
                    &handle,
                    "stopped",
                )
                .await;
                agent.forget_instance(&id);
            }
            break;
        };
        last_definition = definition.clone();
        if control.borrow().held && pending.is_none() && resume.is_none() {
            agent.update(&service, index, |s| {
                s.health = Health::Stopped;
                s.pid = None;
            });
            if wait_while_held(&mut control).await {
                break;
            }
            continue;
        }
        let resumed = resume.is_some();
        let (handle, port) = match resume.take().map(Ok).unwrap_or(Err(pending.take())) {
            Ok((handle, port)) => {
                agent.emit(
                    &service,
                    &id,
                    EventKind::Reconfigured,
                    &format!("release {release}: checks and timeouts changed in place, {handle} keeps running"),
                );
                (handle, port)
            }
            Err(Some(adopted)) => {
                let message = format!(
                    "{} port {} (still running from a previous agent)",
                    adopted.handle, adopted.port
                );
                agent.emit(&service, &id, EventKind::Adopted, &message);
                (adopted.handle, adopted.port)
            }
            Err(None) => {
                match start(&agent, &definition, release, &service, index, slot_port).await {
                    Ok(started) => {
                        if !first_start {
                            agent.emit(
                                &service,
                                &id,
                                EventKind::Restarted,
                                &format!("restart {restarts}"),
                            );
                        }
                        agent.emit(
                            &service,
                            &id,
                            EventKind::Started,
                            &format!("{} port {} user {}", started.0, started.1, started.0.user()),
                        );
                        started
                    }
                    Err(reason) => {
                        first_start = false;
                        agent.emit(&service, &id, EventKind::StartFailed, &reason);
                        agent.update(&service, index, |s| {
                            s.health = Health::Failed;
                            s.last_error = Some(reason.clone());
                            s.pid = None;
                        });
                        let delay = backoff.next_delay().max(backoff::FIRST_DELAY);
                        if back_off(&agent, &service, &id, "next start", delay, &mut control).await
                        {
                            break;
                        }
                        continue;
                    }
                }
            }
        };
        first_start = false;
        agent.record_instance(&handle, port, restarts);
        let crash_looping_now = backoff.crash_looping();
        agent.update(&service, index, |s| {
            s.release = release;
            if resumed {
                return;
            }
            s.pid = handle.pid();
            s.port = Some(port);
            s.endpoint = handle.endpoint();
            s.started_at_ms = Some(handle.started_at_unix_ms());
            s.user = Some(handle.user().to_string());
            s.log_path = handle.log_path().map(Into::into);
            // A crash-looping instance shows so until it is healthy again.
            s.health = if crash_looping_now {
                Health::CrashLooping
            } else {
                Health::Starting
            };
            s.last_error = None;
            s.generation = generation;
            // A postgres server's role is what its health check sees, from this start on.
            s.database = None;
        });
        let healthy_since: Mutex<Option<Instant>> = Mutex::new(None);
        let ending = watch_instance(
            &agent,
            &definition,
            &service,
            index,
            &handle,
            port,
            &mut control,
            (&mut generation, &mut reconfigured),
            &healthy_since,
        )
        .await;
        let healthy_for = healthy_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed());
        slot_port = healthy_for.map(|_| port);
        match ending {
            Ending::Reconfigure => {
                resume = Some((handle, port));
                continue;
            }
            Ending::Stop => {
                stop_instance(&agent, &definition, &service, index, &handle, "stopped").await;
                agent.forget_instance(&id);
                break;
            }
            Ending::Hold => {
                stop_instance(
                    &agent,
                    &definition,
                    &service,
                    index,
                    &handle,
                    "stopped and held (a backup or restore)",
                )
                .await;
                agent.forget_instance(&id);
                backoff.reset();
                continue;
            }
            Ending::Restart => {
                stop_instance(
                    &agent,
                    &definition,
                    &service,
                    index,
                    &handle,
                    "stopped for a restart",
                )
                .await;
                restarts += 1;
                backoff.reset();
                agent.update(&service, index, |s| s.restarts = restarts);
                continue;
            }
            Ending::Exited(exit) => {
                let (kind, message) = match &exit {
                    Some(exit) if exit.oom_killed => (
                        EventKind::OomKilled,
                        format!("{exit}: the memory limit was reached"),
                    ),
                    Some(exit) => (EventKind::Exited, exit.to_string()),
                    None => (
                        EventKind::Exited,
                        "ended; its exit status was not recorded".to_string(),
                    ),
                };
                agent.emit(&service, &id, kind, &message);
                agent.update(&service, index, |s| {
                    s.last_exit = Some(message.clone());
                    s.pid = None;
                    s.health = Health::Stopped;
                });
            }
            Ending::Unhealthy(reason) => {
                agent.emit(&service, &id, EventKind::Unhealthy, &reason);
                agent.update(&service, index, |s| {
                    s.health = Health::Unhealthy;
                    s.last_error = Some(reason.clone());
                });
                stop_instance(
                    &agent,
                    &definition,
                    &service,
                    index,
                    &handle,
                    "stopped as unhealthy",
                )
                .await;
            }
        }
        // Killed or crashed after it served: restart at once (backoff is for a program that
        // cannot start), and never leave a working service waiting with nothing up.
        let served = healthy_for.is_some();
        if served {
            served_release = Some(release);
            reported_crash_loop = false;
        }
        let delay = backoff::delay_for(
            backoff.after_run(served),
            backoff::Service {
                served_in_release: served_release == Some(release),
                others_up: agent.others_up(&service, index),
            },
        );
        restarts += 1;
        let crash_looping = backoff.crash_looping();
        agent.update(&service, index, |s| {
            s.restarts = restarts;
            s.health = if crash_looping {
                Health::CrashLooping
            } else if delay.is_zero() {
                Health::Starting
            } else {
                Health::Backoff
            };
        });
        if crash_looping && !reported_crash_loop {
            reported_crash_loop = true;
            agent.emit(
                &service,
                &id,
                EventKind::CrashLooping,
                &format!(
                    "{} restarts in a row without becoming healthy",
                    backoff.consecutive()
                ),
            );
        }
        if !delay.is_zero() && back_off(&agent, &service, &id, "restart", delay, &mut control).await
        {
            break;
        }
    }
    agent.update(&service, index, |s| {
        s.health = Health::Stopped;
        s.pid = None;
    });
}

/// Records a `backoff` event and waits it out; true when a stop was requested meanwhile.
async fn back_off(
    agent: &Agent,
    service: &str,
    id: &str,
    what: &str,
    delay: Duration,
    control: &mut watch::Receiver<Control>,
) -> bool {
    agent.emit(
        service,
        id,
        EventKind::Backoff,
        &format!("{what} in {}", bow_spec::units::Duration(delay)),
    );
    wait_or_stop(delay, control).await
}

/// Waits until the slot's hold is lifted; true when a stop was requested meanwhile.
async fn wait_while_held(control: &mut watch::Receiver<Control>) -> bool {
    loop {
        let current = *control.borrow_and_update();
        if current.stop {
            return true;
        }
        if !current.held {
            return false;
        }
        if control.changed().await.is_err() {
            return true;
        }
    }
}

/// Sleeps `delay`; true when a stop was requested meanwhile.
async fn wait_or_stop(delay: Duration, control: &mut watch::Receiver<Control>) -> bool {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return control.borrow().stop,
            changed = control.changed() => {
                if changed.is_err() || control.borrow().stop {
                    return true;
                }
            }
        }
    }
}

async fn start(
    agent: &Arc<Agent>,
    definition: &Service,
    release: i64,
    service: &str,
    index: u32,
    preferred: Option<u16>,
) -> Result<(Handle, u16), String> {
    let port = match preferred.filter(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()) {
        Some(port) => port,
        None => agent
            .ports
            .pick()
            .map_err(|e| format!("no free port: {e}"))?,
    };
    // A live process under this id is no slot's (this slot's own has ended): an orphan, stopped
    // before the id is used again, rather than a start that fails.
    if let Some(orphan) = crate::adopt::live_handle(agent, &format!("{service}.{index}")) {
        crate::adopt::stop_orphan(agent, &orphan, "found where this slot was to start").await;
    }
    let driver = agent.drivers.for_service(definition)?;
    let venv = agent.venv(service);
    let mut context = context(agent, service, index, port, venv.as_deref());
    if matches!(definition.workload, bow_spec::Workload::Container(_)) {
        let (network, _) = agent.ensure_container_network().await?;
        context.names = agent.container_names();
        context.container_network = Some(network.name);
    }
    if crate::postgres::of(definition).is_some()
        && let Some(did) =
            crate::postgres_replica::prepare_member(agent, service, index, definition).await?
    {
        agent.emit(
            service,
            &format!("{service}.{index}"),
            EventKind::Built,
            &did,
        );
    }
    let secrets = crate::secrets::files_for(agent, service, definition)?;
    let mut spec = instance_spec::build(definition, &context, secrets)?;
    spec.release = release.max(0) as u64;
    if let Some(container) = spec.container.as_mut() {
        container.pull_auth = crate::image_build::pull_auth(agent, &container.image)?;
    }
    let handle = driver.start(spec).await.map_err(|e| e.to_string())?;
    if handle.kind() == "container" {
        agent.container_started().await;
    }
    Ok((handle, port))
}

/// Takes the instance out of the edge, lets its in-flight requests finish (up to the
/// service's drain timeout), then stops it: SIGTERM, SIGKILL after `stop_timeout`.
async fn stop_instance(
    agent: &Arc<Agent>,
    definition: &Service,
    service: &str,
    index: u32,
    handle: &Handle,
    why: &str,
) {
    let id = handle.instance_id();
    let timeout = definition.stop_timeout.as_std();
    agent.update(service, index, |s| s.health = Health::Stopping);
    // A database's connections are sessions, not requests: they do not end by themselves
    // (pools keep them), and its fast shutdown ends them cleanly. No drain for postgres.
    if (!definition.routes.is_empty() || definition.port.is_some())
        && crate::postgres::of(definition).is_none()
        && let Some(bow_edge::DrainOutcome::TimedOut { in_flight }) = agent
            .drain_instance(id, definition.deploy.drain_timeout.as_std())
            .await
    {
        agent.emit(
            service,
            id,
            EventKind::DrainTimeout,
            &format!(
                "{in_flight} requests still in flight after {}",
                definition.deploy.drain_timeout
            ),
        );
    }
    agent.emit(
        service,
        id,
        EventKind::Stopping,
        &format!(
            "{handle} (SIGTERM, SIGKILL after {})",
            bow_spec::units::Duration(timeout)
        ),
    );
    let outcome = agent.drivers.for_handle(handle).stop(handle, timeout).await;
    let message = match outcome {
        Ok(StopOutcome::Terminated(exit)) => format!("{why}: {}", describe(exit.as_ref())),
        Ok(StopOutcome::Killed(exit)) => format!(
            "{why}: ignored SIGTERM for {}, {}",
            bow_spec::units::Duration(timeout),
            describe(exit.as_ref())
        ),
        Ok(StopOutcome::AlreadyGone(exit)) => {
            format!("{why}: already gone, {}", describe(exit.as_ref()))
        }
        Err(error) => format!("{why}: stop failed: {error}"),
    };
    agent.emit(service, id, EventKind::Stopped, &message);
}

fn describe(exit: Option<&InstanceExit>) -> String {
    exit.map_or_else(
        || "exit status not recorded".to_string(),
        ToString::to_string,
    )
}

#[allow(clippy::too_many_arguments)]
async fn watch_instance(
    agent: &Arc<Agent>,
    definition: &Service,
    service: &str,
    index: u32,
    handle: &Handle,
    port: u16,
    control: &mut watch::Receiver<Control>,
    (generation, reconfigured): (&mut u64, &mut u64),
    healthy_since: &Mutex<Option<Instant>>,
) -> Ending {
    let exit = agent.drivers.for_handle(handle).wait_exit(handle);
    tokio::pin!(exit);
    let health = crate::health_watch::health_loop(
        agent,
        definition,
        service,
        index,
        handle,
        port,
        healthy_since,
    );
    tokio::pin!(health);
    loop {
        tokio::select! {
            exit = &mut exit => return Ending::Exited(exit),
            reason = &mut health => return Ending::Unhealthy(reason),
            changed = control.changed() => {
                let current = *control.borrow();
                if changed.is_err() || current.stop {
                    return Ending::Stop;
                }
                if current.held {
                    return Ending::Hold;
                }
                if current.restart_generation != *generation {
                    *generation = current.restart_generation;
                    return Ending::Restart;
                }
                if current.reconfigure != *reconfigured {
                    *reconfigured = current.reconfigure;
                    return Ending::Reconfigure;
                }
            }
        }
    }
}

pub(crate) fn context<'a>(
    agent: &'a Agent,
    service: &'a str,
    index: u32,
    port: u16,
    venv: Option<&'a std::path::Path>,
) -> InstanceContext<'a> {
    InstanceContext {
        project: &agent.project,
        environment: &agent.environment,
        state_dir: &agent.state_dir,
        service_name: service,
        index,
        port,
        venv,
        root: agent.root,
        names: agent.names(),
        other_dirs: agent.other_service_dirs(service),
        databases: agent
            .lock()
            .spec
            .as_ref()
            .map(|spec| {
                spec.services
                    .iter()
                    .filter_map(|(name, s)| Some((name.clone(), crate::postgres::of(s)?.clone())))
                    .collect()
            })
            .unwrap_or_default(),
        container_network: None,
    }
}

#[cfg(test)]
#[path = "supervisor_tests.rs"]
mod tests;
