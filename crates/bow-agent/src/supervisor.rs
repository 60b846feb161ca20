//! One instance slot's life: start, watch (exit via pidfd, health probes), restart with
//! backoff, stop. One task per slot; it reports through the agent's status table and events.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use bow_driver::{InstanceExit, InstanceHandle, ProcessState, StopOutcome};
use bow_spec::Service;

use crate::agent::{Agent, Slot};
use crate::api::{Health, InstanceStatus};
use crate::backoff::{Backoff, STABLE_PERIOD};
use crate::health::{ExecContext, probe};
use crate::instance_spec::{self, InstanceContext};

/// Without a health check, an instance is healthy once it has stayed up this long.
pub const NO_CHECK_HEALTHY_AFTER: Duration = Duration::from_secs(1);
/// Until an instance is first healthy, it is probed at least this often (failures still count
/// at most once per `interval`).
const STARTUP_PROBE_PAUSE: Duration = Duration::from_millis(100);

/// What the agent asks of a slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Control {
    pub stop: bool,
    /// Bumped to ask for one restart.
    pub restart_generation: u64,
    /// Bumped when the slot's definition changed in place (checks, timeouts): the process
    /// keeps running and is watched again with the new definition.
    pub reconfigure: u64,
}

/// An instance found running when the agent started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    pub handle: InstanceHandle,
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
        health: Health::Starting,
        restarts: adopted.as_ref().map_or(0, |a| a.restarts),
        started_at_ms: None,
        uptime_ms: None,
        last_exit: None,
        last_error: None,
        user: None,
        log_path: None,
        release: plan.release,
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
    let mut resume: Option<(InstanceHandle, u16)> = None;
    let mut first_start = true;
    let mut reported_crash_loop = false;
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
                        "adopted",
                        &format!(
                            "pid {} port {} (still running from a previous agent; not wanted, stopping it)",
                            adopted.handle.pid, adopted.port
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
        let resumed = resume.is_some();
        let (handle, port) = match resume.take().map(Ok).unwrap_or(Err(pending.take())) {
            Ok((handle, port)) => {
                agent.emit(
                    &service,
                    &id,
                    "reconfigured",
                    &format!("release {release}: checks and timeouts changed in place, pid {} keeps running", handle.pid),
                );
                (handle, port)
            }
            Err(Some(adopted)) => {
                let message = format!(
                    "pid {} port {} (still running from a previous agent)",
                    adopted.handle.pid, adopted.port
                );
                agent.emit(&service, &id, "adopted", &message);
                (adopted.handle, adopted.port)
            }
            Err(None) => {
                match start(&agent, &definition, release, &service, index, slot_port).await {
                    Ok(started) => {
                        if !first_start {
                            agent.emit(&service, &id, "restarted", &format!("restart {restarts}"));
                        }
                        agent.emit(
                            &service,
                            &id,
                            "started",
                            &format!(
                                "pid {} port {} user {}",
                                started.0.pid, started.1, started.0.user
                            ),
                        );
                        started
                    }
                    Err(reason) => {
                        first_start = false;
                        agent.emit(&service, &id, "start-failed", &reason);
                        agent.update(&service, index, |s| {
                            s.health = Health::Failed;
                            s.last_error = Some(reason.clone());
                            s.pid = None;
                        });
                        let delay = backoff.next_delay().max(crate::backoff::FIRST_DELAY);
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
            s.pid = Some(handle.pid);
            s.port = Some(port);
            s.started_at_ms = Some(handle.started_at_unix_ms);
            s.user = Some(handle.user.clone());
            s.log_path = Some(handle.log_path.clone());
            // A crash-looping instance shows so until it is healthy again.
            s.health = if crash_looping_now {
                Health::CrashLooping
            } else {
                Health::Starting
            };
            s.last_error = None;
            s.generation = generation;
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
                        "oom-killed",
                        format!("{exit}: the memory limit was reached"),
                    ),
                    Some(exit) => ("exited", exit.to_string()),
                    None => (
                        "exited",
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
                agent.emit(&service, &id, "unhealthy", &reason);
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
        if healthy_for.is_some_and(|d| d >= STABLE_PERIOD) {
            backoff.reset();
            reported_crash_loop = false;
        }
        let delay = backoff.next_delay();
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
                "crash-looping",
                &format!(
                    "{} restarts in a row without staying healthy for {}",
                    backoff.consecutive(),
                    bow_spec::units::Duration(STABLE_PERIOD)
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
        "backoff",
        &format!("{what} in {}", bow_spec::units::Duration(delay)),
    );
    wait_or_stop(delay, control).await
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
) -> Result<(InstanceHandle, u16), String> {
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
    let venv = agent.venv(service);
    let context = context(agent, service, index, port, venv.as_deref());
    let secrets = crate::secrets::files_for(agent, service, definition)?;
    let mut spec = instance_spec::build(definition, &context, secrets)?;
    spec.release = release.max(0) as u64;
    let driver = agent.driver.clone();
    let handle = tokio::task::spawn_blocking(move || driver.start(&spec))
        .await
        .map_err(|e| format!("start task failed: {e}"))?
        .map_err(|e| e.to_string())?;
    Ok((handle, port))
}

/// Takes the instance out of the edge, lets its in-flight requests finish (up to the
/// service's drain timeout), then stops it: SIGTERM, SIGKILL after `stop_timeout`.
async fn stop_instance(
    agent: &Arc<Agent>,
    definition: &Service,
    service: &str,
    index: u32,
    handle: &InstanceHandle,
    why: &str,
) {
    let id = &handle.instance_id;
    let timeout = definition.stop_timeout.as_std();
    agent.update(service, index, |s| s.health = Health::Stopping);
    if (!definition.routes.is_empty() || definition.port.is_some())
        && let Some(bow_edge::DrainOutcome::TimedOut { in_flight }) = agent
            .drain_instance(id, definition.deploy.drain_timeout.as_std())
            .await
    {
        agent.emit(
            service,
            id,
            "drain-timeout",
            &format!(
                "{in_flight} requests still in flight after {}",
                definition.deploy.drain_timeout
            ),
        );
    }
    agent.emit(
        service,
        id,
        "stopping",
        &format!(
            "pid {} (SIGTERM, SIGKILL after {})",
            handle.pid,
            bow_spec::units::Duration(timeout)
        ),
    );
    let driver = agent.driver.clone();
    let stopped = handle.clone();
    let outcome = tokio::task::spawn_blocking(move || driver.stop(&stopped, timeout)).await;
    let message = match outcome {
        Ok(Ok(StopOutcome::Terminated(exit))) => format!("{why}: {}", describe(exit.as_ref())),
        Ok(Ok(StopOutcome::Killed(exit))) => format!(
            "{why}: ignored SIGTERM for {}, {}",
            bow_spec::units::Duration(timeout),
            describe(exit.as_ref())
        ),
        Ok(Ok(StopOutcome::AlreadyGone(exit))) => {
            format!("{why}: already gone, {}", describe(exit.as_ref()))
        }
        Ok(Err(error)) => format!("{why}: stop failed: {error}"),
        Err(error) => format!("{why}: stop task failed: {error}"),
    };
    agent.emit(service, id, "stopped", &message);
    reap_later(handle.clone());
}

fn describe(exit: Option<&InstanceExit>) -> String {
    exit.map_or_else(
        || "exit status not recorded".to_string(),
        ToString::to_string,
    )
}

/// Reaps the shim (a child of the agent, which is a subreaper) once it has exited.
fn reap_later(handle: InstanceHandle) {
    tokio::spawn(async move {
        for _ in 0..300 {
            if bow_driver::reap_shim(&handle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

#[allow(clippy::too_many_arguments)]
async fn watch_instance(
    agent: &Arc<Agent>,
    definition: &Service,
    service: &str,
    index: u32,
    handle: &InstanceHandle,
    port: u16,
    control: &mut watch::Receiver<Control>,
    (generation, reconfigured): (&mut u64, &mut u64),
    healthy_since: &Mutex<Option<Instant>>,
) -> Ending {
    let exit = wait_exit(agent.clone(), handle.clone());
    tokio::pin!(exit);
    let health = health_loop(
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

/// Resolves when the instance's process has ended, with what its shim recorded.
async fn wait_exit(agent: Arc<Agent>, handle: InstanceHandle) -> Option<InstanceExit> {
    if let Some(fd) = crate::pidfd::open(handle.pid) {
        // Opened first, verified second: the pidfd cannot refer to a reused pid.
        if matches!(agent.driver.verify(&handle), Ok(ProcessState::Running)) {
            crate::pidfd::exited(fd).await;
        }
    }
    // The shim writes exit.json after reaping the process and removing its cgroup.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(Some(exit)) = agent.driver.exit_status(&handle) {
            reap_later(handle);
            return Some(exit);
        }
        let shim_gone = !matches!(bow_driver::verify_shim(&handle), Ok(ProcessState::Running));
        if Instant::now() > deadline
            || (shim_gone && Instant::now() + Duration::from_secs(4) > deadline)
        {
            return agent.driver.exit_status(&handle).ok().flatten();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Probes until the instance has failed `retries` checks in a row; returns the last reason.
async fn health_loop(
    agent: &Arc<Agent>,
    definition: &Service,
    service: &str,
    index: u32,
    handle: &InstanceHandle,
    port: u16,
    healthy_since: &Mutex<Option<Instant>>,
) -> String {
    let id = format!("{service}.{index}");
    let mark_healthy = |message: &str| {
        *healthy_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        agent.update(service, index, |s| s.health = Health::Healthy);
        agent.emit(service, &id, "healthy", message);
    };
    let Some(health) = &definition.health else {
        tokio::time::sleep(NO_CHECK_HEALTHY_AFTER).await;
        mark_healthy(&format!(
            "up for {} (no health check)",
            bow_spec::units::Duration(NO_CHECK_HEALTHY_AFTER)
        ));
        return std::future::pending().await;
    };
    let venv = agent.venv(service);
    let context = context(agent, service, index, port, venv.as_deref());
    let env = crate::secrets::health_env(
        agent,
        service,
        definition,
        handle,
        instance_spec::environment(definition, &context),
    );
    let dir = std::path::PathBuf::from(definition.dir.clone().unwrap_or_else(|| "/".to_string()));
    let exec = ExecContext {
        dir: &dir,
        env: &env,
        ids: agent.root.then_some((handle.uid, handle.gid)),
    };
    let started = Instant::now();
    let interval = health.interval.as_std();
    let mut ever_healthy = false;
    let mut healthy = false;
    let mut failures = 0;
    let mut last_counted: Option<Instant> = None;
    loop {
        match probe(&health.check, port, health.timeout.as_std(), &exec).await {
            Ok(()) => {
                failures = 0;
                if !healthy {
                    healthy = true;
                    ever_healthy = true;
                    mark_healthy(&format!(
                        "{} passed after {} ms",
                        check_name(&health.check),
                        started.elapsed().as_millis()
                    ));
                }
            }
            Err(reason) => {
                let grace = !ever_healthy && started.elapsed() < health.start_period.as_std();
                let counts =
                    last_counted.is_none_or(|t| t.elapsed() + Duration::from_millis(5) >= interval);
                if !grace && counts {
                    failures += 1;
                    last_counted = Some(Instant::now());
                    if failures >= health.retries {
                        return format!(
                            "{} failed {failures} times in a row: {reason}",
                            check_name(&health.check)
                        );
                    }
                }
            }
        }
        let pause = if ever_healthy {
            interval
        } else {
            interval.min(STARTUP_PROBE_PAUSE)
        };
        tokio::time::sleep(pause).await;
    }
}

fn context<'a>(
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
    }
}

fn check_name(check: &bow_spec::Check) -> &'static str {
    match check {
        bow_spec::Check::Http(_) => "http check",
        bow_spec::Check::Tcp(_) => "tcp check",
        bow_spec::Check::Exec(_) => "exec check",
    }
}
