//! `bow follow status|pause|resume|stop`: the agent following a git branch
//! (`bow up -d --follow`); the settings are `<state-dir>/follow.json`.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::cli::{FollowCommand, StackArgs};
use crate::follow;

pub fn run(command: FollowCommand, global: &StackArgs) -> Result<ExitCode> {
    let (stack, what) = match command {
        FollowCommand::Status { stack } => (stack, "status"),
        FollowCommand::Pause { stack } => (stack, "pause"),
        FollowCommand::Resume { stack } => (stack, "resume"),
        FollowCommand::Stop { stack } => (stack, "stop"),
    };
    let state_dir = crate::session::state_dir_only(&stack.or(global))?;
    let Some(mut settings) = follow::read(&state_dir) else {
        bail!(
            "nothing is followed for {}: `bow up -d --follow [BRANCH]` starts following",
            state_dir.display()
        );
    };
    match what {
        "status" => {
            let short = |c: &Option<String>| {
                c.as_deref()
                    .map_or("-".to_string(), |c| c.chars().take(12).collect())
            };
            println!(
                "following {} of {} every {} ms",
                settings.branch,
                settings.work_tree.display(),
                settings.interval_ms
            );
            println!("applied:  {}", short(&settings.applied));
            if let Some(name) = &settings.git_key_secret {
                println!("fetches:  over SSH with the deploy key in secret {name}");
            }
            if let Some(name) = &settings.git_token_secret {
                println!("fetches:  over HTTPS with the token in secret {name}");
            }
            if settings.failed.is_some() {
                println!(
                    "failed:   {} (not tried again until a newer commit)",
                    short(&settings.failed)
                );
            }
            match &settings.paused {
                Some(why) => println!("paused:   {why} (`bow follow resume`)"),
                None => println!("paused:   no"),
            }
            if let Some(said) = &settings.said {
                println!("last:     {said}");
            }
        }
        "pause" => {
            settings.paused = Some("bow follow pause".to_string());
            follow::write(&state_dir, &settings)?;
            eprintln!("following paused: new commits wait until `bow follow resume`");
        }
        "resume" => {
            settings.paused = None;
            follow::write(&state_dir, &settings)?;
            std::fs::write(state_dir.join(follow::TRIGGER), b"")?;
            eprintln!("following {} again: fetching now", settings.branch);
        }
        _ => {
            std::fs::remove_file(follow::path(&state_dir))?;
            eprintln!("not following {} any more", settings.branch);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// After a `bow rollback`: following pauses, so that the next poll does not deploy again
/// what was rolled back. Says so when it did.
pub fn pause_for_rollback(state_dir: &std::path::Path, service: &str) {
    let Some(mut settings) = follow::read(state_dir) else {
        return;
    };
    if settings.paused.is_none() {
        settings.paused = Some(format!("bow rollback {service}"));
        if follow::write(state_dir, &settings).is_ok() {
            eprintln!(
                "following {} paused (a rollback would be undone by the next commit): `bow follow resume` when ready",
                settings.branch
            );
        }
    }
}
