//! `bow up`: validate, start the agent (or talk to the running one), apply, and either follow
//! a live view (foreground; Ctrl-C stops everything) or return once healthy (`-d`).

use std::io::IsTerminal;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bow_agent::api::{Health, Request, Response, StatusReport};
use bow_agent::{Agent, AgentConfig};

use crate::cli::{FollowFlags, StackArgs};
use crate::commands::status;
use crate::session::Session;

pub fn run(
    args: &StackArgs,
    detach: bool,
    flags: FollowFlags,
    restore: Option<&str>,
) -> Result<ExitCode> {
    let mut session = Session::load(args)?;
    if let Some(which) = restore {
        fresh_host_only(&session, which)?;
    }
    crate::secret_store::attach_digests(&mut session)?;
    if flags.follow.is_some() && !detach {
        bail!("--follow needs -d: the agent follows in the background");
    }
    // Checked before anything starts: a work tree, on the branch, with an upstream, and the
    // secrets it names.
    let following = crate::follow::settings_from_flags(&session, flags)?;
    let state_dir = session.state_dir.clone();
    let code = up(session, detach)?;
    if restore.is_some() && code == ExitCode::SUCCESS {
        let restored = crate::commands::backup::restore_all(args, true)?;
        if restored != ExitCode::SUCCESS {
            return Ok(restored);
        }
    }
    if let Some(settings) = following
        && code == ExitCode::SUCCESS
    {
        crate::follow::write_keeping_progress(&state_dir, settings.clone())?;
        eprintln!(
            "following {} of {} every {} (`bow follow status`; `bow follow stop` ends it)",
            settings.branch,
            settings.work_tree.display(),
            bow_spec::units::Duration(Duration::from_millis(settings.interval_ms))
        );
    }
    Ok(code)
}

/// `--restore latest` replaces data: only on a host where this environment has none yet (no
/// volumes in the state dir), so that a repeated command never rolls a live system back.
fn fresh_host_only(session: &Session, which: &str) -> Result<()> {
    if which != "latest" {
        anyhow::bail!(
            "--restore {which}: only `latest` is known (the newest good backup of every service); `bow backup restore SERVICE ID` restores a given one"
        );
    }
    let volumes = bow_agent::postgres::volumes_dir(&session.state_dir);
    let has_data = std::fs::read_dir(&volumes).is_ok_and(|mut entries| entries.next().is_some());
    if has_data {
        anyhow::bail!(
            "--restore latest is for a fresh host, and {} holds data already: `bow restore-all` restores over it, asked",
            volumes.display()
        );
    }
    Ok(())
}

fn up(session: Session, detach: bool) -> Result<ExitCode> {
    if let Some(note) = crate::commands::plan::engine_note(&session.spec) {
        eprintln!("{note}");
    }
    let running = session.call(&Request::Ping, Duration::from_secs(5))?;
    match (running, detach) {
        (Some(_), _) => {
            let (revision, services) = apply(&session)?;
            if detach {
                // A running agent deploys the changes: follow them like `bow apply`.
                if !services.is_empty() {
                    let code = crate::commands::apply::follow(&session.state_dir, revision)?;
                    if code != ExitCode::SUCCESS {
                        return Ok(code);
                    }
                }
                wait_healthy(&session, None).map_err(|error| {
                    anyhow::anyhow!(
                        "{error:#}\nthe agent (started before this `bow up`) and its instances keep running: `bow status` shows them, `bow down` stops them"
                    )
                })
            } else {
                eprintln!(
                    "an agent already runs for {}; following it (Ctrl-C detaches, `bow down` stops)",
                    session.state_dir.display()
                );
                follow(&session)
            }
        }
        (None, true) => {
            spawn_agent(&session)?;
            // An edge that cannot start (a port taken) or an apply the agent refuses: stop
            // what this command started instead of leaving it behind. (An instance that
            // fails is different: the agent keeps retrying it while the others serve.)
            apply(&session)
                .and_then(|(revision, _)| wait_healthy(&session, Some(revision)))
                .map_err(|error| stop_started(&session, error))
        }
        (None, false) => foreground(session),
    }
}

fn apply(session: &Session) -> Result<(i64, Vec<String>)> {
    match session.call(
        &Request::Apply {
            spec: Box::new(session.spec.clone()),
        },
        Duration::from_secs(30),
    )? {
        Some(Response::Applied { revision, services }) => {
            eprintln!(
                "applied {} ({}) as revision {revision}",
                session.spec.project, session.spec.environment
            );
            Ok((revision, services))
        }
        Some(other) => bail!("unexpected answer from the agent: {other:?}"),
        None => Err(crate::session::no_agent(&session.state_dir)),
    }
}

/// Stops the agent this `bow up -d` started, with its instances, after `error`; the error
/// returned says what happened to them.
fn stop_started(session: &Session, error: anyhow::Error) -> anyhow::Error {
    match session.call(&Request::Down, Duration::from_secs(120)) {
        Ok(Some(Response::Down { stopped })) => {
            let released = bow_agent::wait_released(&session.state_dir, Duration::from_secs(10));
            let agent = if released {
                "the agent"
            } else {
                "the agent (still exiting)"
            };
            anyhow::anyhow!(
                "{error:#}\nnothing keeps running: stopped {agent} and the {} instances this `bow up` had started",
                stopped.len()
            )
        }
        Ok(_) => anyhow::anyhow!("{error:#}\nthe agent this `bow up` started is gone"),
        Err(stop_error) => anyhow::anyhow!(
            "{error:#}\nthe agent this `bow up` started could not be stopped ({stop_error:#}) and may keep running: stop it with `bow down`"
        ),
    }
}

/// Starts `bow agent` in its own session, its output in `<state-dir>/agent.log` (0600: it
/// holds paths, errors and addresses other users have no business reading), and waits until
/// it answers.
fn spawn_agent(session: &Session) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::create_dir_all(&session.state_dir)
        .with_context(|| format!("cannot create {}", session.state_dir.display()))?;
    let log_path = session.state_dir.join(bow_agent::layout::AGENT_LOG);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    // One made by an older bow was 0644.
    log.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the bow binary")?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("agent")
        .arg("--file")
        .arg(&session.file)
        .arg("--env")
        .arg(&session.spec.environment)
        .arg("--state-dir")
        .arg(&session.state_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    use std::os::unix::process::CommandExt;
    command.process_group(0);
    // SAFETY: setsid is async-signal-safe; the child detaches from our terminal and session.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn().context("cannot start the agent")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last: Vec<&str> = tail.lines().rev().take(5).collect();
            bail!(
                "the agent exited ({status}): {}",
                last.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if matches!(
            session.call(&Request::Ping, Duration::from_secs(2)),
            Ok(Some(_))
        ) {
            // The agent is in its own session now; it is not our child to wait for.
            std::mem::forget(child);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "the agent did not answer within 15s; see {}",
        log_path.display()
    )
}

/// How long `up -d` waits: each dependency level may take its services' deploy timeout.
fn wait_budget(session: &Session) -> Duration {
    let spec = &session.spec;
    let mut depth = std::collections::BTreeMap::new();
    let mut budget = Duration::ZERO;
    for name in bow_spec::dependency_order(spec) {
        let service = &spec.services[&name];
        let own = service.deploy.timeout.as_std()
            + service
                .health
                .as_ref()
                .map_or(Duration::ZERO, |h| h.start_period.as_std());
        let before = service
            .depends_on
            .iter()
            .filter_map(|d| depth.get(d))
            .copied()
            .max()
            .unwrap_or(Duration::ZERO);
        depth.insert(name, before + own);
        budget = budget.max(before + own);
    }
    budget.max(Duration::from_secs(10))
}

/// A service of `revision` whose deploy failed before it had an instance (its python venv,
/// its postgres cluster): no instance's health would ever say so, so its reason is the error.
fn failed_before_any_instance(session: &Session, revision: i64) -> Result<()> {
    let Some(Response::Progress(report)) =
        session.call(&Request::Progress { revision }, Duration::from_secs(10))?
    else {
        return Ok(());
    };
    if let Some(failed) = report.services.iter().find(|s| {
        s.phase == bow_agent::api::Phase::Failed
            && s.failure.as_ref().is_some_and(|f| f.instance.is_none())
    }) {
        bail!(
            "{} could not be deployed: {}",
            failed.service,
            failed.detail
        );
    }
    Ok(())
}

/// Whether every deploy revision `revision` started has finished.
fn deploys_done(session: &Session, revision: i64) -> bool {
    matches!(
        session.call(&Request::Progress { revision }, Duration::from_secs(10)),
        Ok(Some(Response::Progress(report))) if report.done
    )
}

fn wait_healthy(session: &Session, revision: Option<i64>) -> Result<ExitCode> {
    let deadline = Instant::now() + wait_budget(session);
    let started = Instant::now();
    loop {
        let report = match session.call(&Request::Status, Duration::from_secs(10))? {
            Some(Response::Status(report)) => *report,
            _ => return Err(crate::session::no_agent(&session.state_dir)),
        };
        // Routed services are served only once the edge listens; an edge that cannot start
        // (a port taken, a bad certificate) fails `up` with its reason.
        let routed = session.spec.services.values().any(|s| !s.routes.is_empty());
        if let Some(note) = report
            .notes
            .iter()
            .find(|n| n.starts_with(bow_agent::EDGE_FAILED_NOTE))
        {
            bail!("{note}");
        }
        if let Some(revision) = revision {
            failed_before_any_instance(session, revision)?;
        }
        // Healthy, and this apply's deploys recorded as done (the releases live: `bow history`
        // right after shows them so).
        if all_healthy(&report)
            && (!routed || report.edge.is_some())
            && revision.is_none_or(|revision| deploys_done(session, revision))
        {
            let count: usize = report.services.iter().map(|s| s.instances.len()).sum();
            eprintln!(
                "{} services, {count} instances healthy in {:.1}s",
                report.services.len(),
                started.elapsed().as_secs_f64()
            );
            return Ok(ExitCode::SUCCESS);
        }
        let failing = report
            .services
            .iter()
            .flat_map(|s| s.instances.iter())
            .find(|i| {
                matches!(i.health, Health::Failed | Health::CrashLooping)
                    || (i.restarts >= 3 && i.health != Health::Healthy)
            });
        if let Some(instance) = failing.or_else(|| {
            (Instant::now() >= deadline)
                .then(|| worst(&report))
                .flatten()
        }) {
            let reason = instance
                .last_error
                .clone()
                .or_else(|| instance.last_exit.clone())
                .unwrap_or_else(|| "did not become healthy in time".to_string());
            eprintln!(
                "error: {} is {}: {reason}",
                instance.id,
                instance.health.label()
            );
            if let Some(path) = instance.log_path.clone().or_else(|| {
                Some(bow_driver::logs::current_log_path(
                    &bow_agent::layout::log_dir(&session.state_dir),
                    &instance.id,
                ))
            }) {
                let lines = last_lines(&path, 20);
                if !lines.is_empty() {
                    eprintln!("last log lines of {}:", instance.id);
                    for line in lines {
                        eprintln!("  {line}");
                    }
                }
            }
            eprintln!(
                "the agent keeps trying; see `bow status`, `bow events`, `bow logs {}`",
                instance.service
            );
            return Ok(ExitCode::from(1));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn worst(report: &StatusReport) -> Option<&bow_agent::api::InstanceStatus> {
    report
        .services
        .iter()
        .flat_map(|s| s.instances.iter())
        .filter(|i| i.health != Health::Healthy)
        .max_by_key(|i| i.health)
}

pub fn all_healthy(report: &StatusReport) -> bool {
    report
        .services
        .iter()
        .all(|s| s.state == Health::Healthy && s.instances.len() as u32 >= s.replicas)
}

fn last_lines(path: &std::path::Path, count: usize) -> Vec<String> {
    let Some(dir) = path.parent() else {
        return Vec::new();
    };
    let id = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".log"))
        .unwrap_or_default();
    let query = bow_driver::logs::LogQuery {
        since: None,
        tail: Some(count),
    };
    bow_driver::logs::read_instance_log(dir, id, query)
        .map(|lines| {
            lines
                .into_iter()
                .map(|l| format!("{} {}", l.stream.as_str(), l.text))
                .collect()
        })
        .unwrap_or_default()
}

/// Foreground: this process is the agent. Events print as they happen; on a terminal a status
/// table is redrawn; Ctrl-C or SIGTERM stops every instance gracefully.
fn foreground(session: Session) -> Result<ExitCode> {
    let runtime = crate::runtime()?;
    let tty = std::io::stdout().is_terminal();
    runtime.block_on(async move {
        let sink: bow_agent::EventSink = Box::new(move |event| {
            if !tty {
                println!("{}", crate::commands::events::line(event));
            }
        });
        let agent = Agent::start(AgentConfig {
            state_dir: session.state_dir.clone(),
            project: session.spec.project.clone(),
            environment: session.spec.environment.clone(),
            drivers: bow_agent::Drivers::local(
                bow_driver::ShimCommand::current_exe(),
                &session.state_dir,
                &session.spec.project,
                &session.spec.environment,
            ),
            event_sink: Some(sink),
            reconcile_on_start: true,
            secrets: crate::secret_store::source(&session),
            plane: Some(crate::commands::edge_plane::command(&session)),
        })
        .await?;
        agent.apply(session.spec.clone())?;
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if tty {
                        print!("\x1b[H\x1b[2J{}", status::table(&agent.status()));
                        println!("\nCtrl-C stops everything");
                    }
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = terminate.recv() => break,
                _ = agent.wait_shutdown() => return anyhow::Ok(()),
            }
        }
        eprintln!("stopping every instance…");
        let stopped = agent.down().await;
        eprintln!("stopped {} instances", stopped.len());
        agent.wait_shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Attached to an agent that already runs: prints its events until Ctrl-C.
fn follow(session: &Session) -> Result<ExitCode> {
    let mut after = match session.call(
        &Request::Events {
            after_id: 0,
            limit: 20,
            last: true,
        },
        Duration::from_secs(5),
    )? {
        Some(Response::Events { events }) => {
            for event in &events {
                println!("{}", crate::commands::events::line(event));
            }
            events.last().map_or(0, |e| e.id)
        }
        _ => 0,
    };
    loop {
        match session.call(
            &Request::Events {
                after_id: after,
                limit: 500,
                last: false,
            },
            Duration::from_secs(5),
        )? {
            Some(Response::Events { events }) => {
                for event in &events {
                    println!("{}", crate::commands::events::line(event));
                    after = event.id;
                }
            }
            _ => return Ok(ExitCode::SUCCESS),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
