//! `bow events`: what the agent did and why, read from the state store (works without an
//! agent).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use bow_agent::api::Event;

use crate::cli::{Output, StackArgs};
use crate::session;

pub fn run(
    args: &StackArgs,
    output: Output,
    tail: usize,
    since: Option<&str>,
    follow: bool,
) -> Result<ExitCode> {
    let state_dir = session::state_dir_only(args)?;
    session::check_readable(&state_dir.join(bow_store::DATABASE_FILE))?;
    let since_ms = since
        .map(crate::commands::logs::parse_since)
        .transpose()?
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        });
    let read = |after: i64, last: bool| -> Result<Vec<Event>> {
        let Some(store) = bow_store::Store::open_existing(&state_dir)? else {
            return Ok(Vec::new());
        };
        let rows = if last {
            store.last_events(tail)?
        } else {
            store.events_after(after, 1000)?
        };
        Ok(rows
            .into_iter()
            .filter(|r| since_ms.is_none_or(|s| r.at_ms >= s))
            .map(|r| Event {
                id: r.id,
                at_ms: r.at_ms,
                service: r.service,
                instance: r.instance,
                kind: r.kind,
                message: r.message,
            })
            .collect())
    };
    let events = read(0, since_ms.is_none()).context("cannot read events")?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(ExitCode::SUCCESS);
    }
    if events.is_empty() && !follow {
        eprintln!("no events recorded in {}", state_dir.display());
    }
    let mut after = events.last().map_or(0, |e| e.id);
    for event in &events {
        println!("{}", line(event));
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        std::thread::sleep(Duration::from_millis(250));
        for event in read(after, false)? {
            println!("{}", line(&event));
            after = event.id;
        }
    }
}

/// `2026-11-22T10:00:00.123Z  web.1         started        pid 42 port 40001`
pub fn line(event: &Event) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(event.at_ms.max(0) as u64);
    let stamp = bow_driver::format_rfc3339_micros(time);
    let stamp = format!("{}Z", &stamp[..stamp.len().saturating_sub(4)]);
    let who = if event.instance.is_empty() {
        "agent"
    } else {
        &event.instance
    };
    format!("{stamp}  {who:<14} {:<14} {}", event.kind, event.message)
        .trim_end()
        .to_string()
}
