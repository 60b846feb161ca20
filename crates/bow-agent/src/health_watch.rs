//! One instance's health over its life: probed (often until first healthy, then every
//! `interval`), healthy on the first pass, unhealthy after `retries` failures in a row
//! outside the start period; without a check, healthy once up for a second.

use bow_reconcile::EventKind;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bow_driver::Handle;
use bow_spec::Service;

use crate::agent::Agent;
use crate::api::Health;
use crate::health::{ExecContext, probe};
use crate::instance_spec;
use crate::supervisor::context;

/// Without a health check, an instance is healthy once it has stayed up this long.
pub const NO_CHECK_HEALTHY_AFTER: Duration = Duration::from_secs(1);
/// Until an instance is first healthy, it is probed at least this often (failures still count
/// at most once per `interval`).
const STARTUP_PROBE_PAUSE: Duration = Duration::from_millis(100);

/// Probes until the instance has failed `retries` checks in a row; returns the last reason.
pub(crate) async fn health_loop(
    agent: &Arc<Agent>,
    definition: &Service,
    service: &str,
    index: u32,
    handle: &Handle,
    port: u16,
    healthy_since: &Mutex<Option<Instant>>,
) -> String {
    let id = format!("{service}.{index}");
    let mark_healthy = |message: &str| {
        *healthy_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        agent.update(service, index, |s| s.health = Health::Healthy);
        agent.emit(service, &id, EventKind::Healthy, message);
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
    let driver = Arc::clone(agent.drivers.for_handle(handle));
    let confined = handle.clone();
    let command =
        move |check: &str, dir: &std::path::Path| driver.check_command(&confined, check, dir);
    let exec = ExecContext {
        dir: &dir,
        env: &env,
        command: &command,
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

fn check_name(check: &bow_spec::Check) -> &'static str {
    match check {
        bow_spec::Check::Http(_) => "http check",
        bow_spec::Check::Tcp(_) => "tcp check",
        bow_spec::Check::Exec(_) => "exec check",
    }
}
