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

use bow_reconcile::NO_CHECK_HEALTHY_AFTER;
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
    if crate::postgres::of(definition).is_some() {
        return postgres_loop(agent, definition, service, index, port, &mark_healthy).await;
    }
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
    let driver = agent.drivers.for_handle(handle);
    let confined = handle.clone();
    let command =
        move |check: &str, dir: &std::path::Path| driver.check_command(&confined, check, dir);
    let exec = ExecContext {
        dir: &dir,
        env: &env,
        command: &command,
        inside: (handle.kind() == "container")
            .then(|| (agent.drivers.for_handle(handle), handle.clone())),
    };
    let target = handle
        .endpoint()
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let started = Instant::now();
    let interval = health.interval.as_std();
    let mut ever_healthy = false;
    let mut healthy = false;
    let mut failures = 0;
    let mut last_counted: Option<Instant> = None;
    loop {
        let probed = Instant::now();
        let result = probe(&health.check, target, health.timeout.as_std(), &exec).await;
        agent
            .health_checks
            .record(service, result.is_ok(), probed.elapsed());
        match result {
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

/// How often a postgres service is checked, how long a check may take, and how many may
/// fail in a row before it is unhealthy.
const POSTGRES_INTERVAL: Duration = Duration::from_secs(2);
const POSTGRES_TIMEOUT: Duration = Duration::from_secs(5);
const POSTGRES_RETRIES: u32 = 3;

/// A postgres service: set up (role, password, database, `init:`, settings reloaded) once it
/// answers, after every start and in-place change; then healthy while its role can log in
/// and run the check query, which also says whether it is the primary or a replica (and its
/// lag). A replica follows the primary wherever it moves.
async fn postgres_loop(
    agent: &Arc<Agent>,
    definition: &Service,
    service: &str,
    index: u32,
    port: u16,
    mark_healthy: &(dyn Fn(&str) + Sync),
) -> String {
    use crate::api::DatabaseRole;
    use crate::postgres_replica::{Seen, current_primary};
    let Some(postgres) = crate::postgres::of(definition) else {
        return "not a postgres service".to_string();
    };
    let id = format!("{service}.{index}");
    let started = Instant::now();
    let ready = async {
        let cluster = crate::postgres::Cluster::locate(
            &agent.state_dir,
            service,
            index,
            definition,
            agent.root,
        )?;
        let secrets = crate::secrets::files_for(agent, service, definition)?;
        let password = crate::postgres_admin::password(definition, &secrets)?.to_vec();
        let upstream = current_primary(agent, service, index);
        let notes = crate::postgres_admin::bootstrap(
            &cluster,
            postgres,
            port,
            &password,
            upstream.as_ref(),
        )
        .await?;
        Ok::<_, String>((cluster, password, notes, upstream))
    };
    let (cluster, password, notes, mut following) = match ready.await {
        Ok(ready) => ready,
        Err(reason) => return reason,
    };
    for note in notes {
        agent.emit(service, &id, EventKind::Reconfigured, &note);
    }
    let max_lag = postgres.max_lag.as_std();
    let mut healthy = false;
    let mut failures = 0;
    // When a replica was last seen streaming within max_lag: a short pause of the primary
    // (a restart) does not take it out of `<service>-ro`.
    let mut last_caught_up: Option<Instant> = None;
    loop {
        let probed = Instant::now();
        let result =
            crate::postgres_admin::probe(&cluster, postgres, port, &password, POSTGRES_TIMEOUT)
                .await;
        // The login counts as the service's health check (bow_health_checks_total).
        agent
            .health_checks
            .record(service, result.is_ok(), probed.elapsed());
        match result {
            Ok(seen) => {
                failures = 0;
                let role = match seen {
                    Seen::Primary => DatabaseRole {
                        role: DatabaseRole::PRIMARY.to_string(),
                        lag_ms: None,
                        serving_reads: false,
                    },
                    Seen::Replica { receiving, lag_ms } => {
                        if receiving && lag_ms <= max_lag.as_millis() as u64 {
                            last_caught_up = Some(Instant::now());
                        }
                        let serving = last_caught_up.is_some_and(|t| t.elapsed() <= max_lag);
                        // A replica follows the primary wherever it is now.
                        let primary = current_primary(agent, service, index);
                        if let Some(primary) = primary.filter(|p| following.as_ref() != Some(p)) {
                            match crate::postgres_replica::follow(
                                &cluster, postgres, port, &primary,
                            )
                            .await
                            {
                                Ok(()) => {
                                    agent.emit(
                                        service,
                                        &id,
                                        EventKind::Reconfigured,
                                        &format!("replica follows {service}.{}", primary.member),
                                    );
                                    following = Some(primary);
                                }
                                Err(reason) => agent.emit(
                                    service,
                                    &id,
                                    EventKind::Reconfigured,
                                    &format!(
                                        "cannot follow {service}.{}: {reason}",
                                        primary.member
                                    ),
                                ),
                            }
                        }
                        DatabaseRole {
                            role: DatabaseRole::REPLICA.to_string(),
                            lag_ms: Some(lag_ms),
                            serving_reads: serving,
                        }
                    }
                };
                agent.update(service, index, |s| s.database = Some(role));
                if !healthy {
                    healthy = true;
                    mark_healthy(&format!(
                        "postgres check (login as {}) passed after {} ms",
                        postgres.user,
                        started.elapsed().as_millis()
                    ));
                }
            }
            Err(reason) => {
                failures += 1;
                if failures >= POSTGRES_RETRIES {
                    return format!("postgres check failed {failures} times in a row: {reason}");
                }
            }
        }
        tokio::time::sleep(POSTGRES_INTERVAL).await;
    }
}

fn check_name(check: &bow_spec::Check) -> &'static str {
    match check {
        bow_spec::Check::Http(_) => "http check",
        bow_spec::Check::Tcp(_) => "tcp check",
        bow_spec::Check::Exec(_) => "exec check",
    }
}
