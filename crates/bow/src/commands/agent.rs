//! `bow agent`: the agent alone, in the foreground (what a systemd unit runs).
//!
//! It resumes the last applied revision (adopting instances that still run) or, when nothing
//! was applied yet, applies the file. SIGTERM and SIGINT end the agent but leave instances
//! running for the next agent to adopt; `bow down` stops everything.

use std::process::ExitCode;

use anyhow::{Context, Result};
use bow_agent::{Agent, AgentConfig};

use crate::cli::{FollowFlags, StackArgs};
use crate::session::Session;

pub fn run(args: &StackArgs, print_systemd_unit: bool, flags: FollowFlags) -> Result<ExitCode> {
    let mut session = Session::load(args)?;
    // `--follow`: checked now, written for the follower thread below (a unit's settings).
    let following = crate::follow::settings_from_flags(&session, flags)?;
    if print_systemd_unit {
        print!("{}", systemd_unit(&session, following.as_ref())?);
        return Ok(ExitCode::SUCCESS);
    }

    let runtime = crate::runtime()?;
    runtime.block_on(async move {
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
            event_sink: None,
            reconcile_on_start: true,
            secrets: crate::secret_store::source(&session),
            plane: Some(crate::commands::edge_plane::command(&session)),
        })
        .await?;
        if agent.status().revision == 0 {
            crate::secret_store::attach_digests(&mut session)?;
            agent.apply(session.spec.clone())?;
        }
        // Scheduled backups (`backup.schedule`), whenever the applied spec has some.
        crate::backup_schedule::spawn(
            agent.clone(),
            session.file.clone(),
            session.spec.environment.clone(),
            session.state_dir.clone(),
        );
        // Continuous deployment, when `--follow` here or `bow up -d --follow` asked for it
        // (follow.json; the state dir exists now).
        if let Some(settings) = following {
            crate::follow::write_keeping_progress(&session.state_dir, settings)?;
        }
        crate::follow::spawn(
            agent.clone(),
            session.state_dir.clone(),
            tokio::runtime::Handle::current(),
        );
        eprintln!(
            "bow agent: serving {}-{} from {}",
            agent.project,
            agent.environment,
            session.state_dir.display()
        );
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = agent.wait_shutdown() => {}
            _ = terminate.recv() => { agent.detach(); agent.wait_shutdown().await; }
            _ = tokio::signal::ctrl_c() => { agent.detach(); agent.wait_shutdown().await; }
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn systemd_unit(session: &Session, following: Option<&crate::follow::Settings>) -> Result<String> {
    let exe = std::env::current_exe().context("cannot find the bow binary")?;
    Ok(format!(
        "# /etc/systemd/system/bow-{project}-{env}.service\n\
         [Unit]\n\
         Description=bow agent for {project} ({env})\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         # The agent decrypts secrets itself (to restart instances on its own) with this key.\n\
         Environment=BOW_AGE_KEY_FILE={key}\n\
         ExecStart={exe} agent --file {file} --env {env} --state-dir {state}{follow}\n\
         # Instances (under their own shims) and the edge process outlive the agent: stopping or restarting\n\
         # the unit ends only the agent; the next one adopts them. `bow down` stops them.\n\
         KillMode=process\n\
         Restart=always\n\
         RestartSec=1\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        project = session.spec.project,
        env = session.spec.environment,
        exe = exe.display(),
        file = session.file.display(),
        state = session.state_dir.display(),
        follow = following.map(crate::follow::flags_of).unwrap_or_default(),
        key = crate::secret_store::source(session)
            .and_then(|s| s.key.path().map(|p| p.display().to_string()))
            .unwrap_or_else(|| "/root/.config/bow/keys/PROJECT-ENV.key".to_string()),
    ))
}
