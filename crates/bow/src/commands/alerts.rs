//! `bow alerts`: the alerts firing now, from the agent; `bow alerts test`: one test
//! notification to the webhook, sent by the agent (which holds the URL and sends the real
//! ones), and the receiver's answer.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use bow_agent::api::{Request, Response};

use crate::cli::{AlertsAction, Output, StackArgs};
use crate::session;

pub fn run(args: &StackArgs, output: Output, action: Option<AlertsAction>) -> Result<ExitCode> {
    let state_dir = session::state_dir_only(args)?;
    let request = match action {
        Some(AlertsAction::Test) => Request::AlertTest,
        None => Request::Alerts,
    };
    match session::call(&state_dir, &request, Duration::from_secs(30))? {
        Some(Response::AlertSent { receiver, status }) => {
            eprintln!("sent a test alert to {receiver}: it answered {status}");
            Ok(ExitCode::SUCCESS)
        }
        Some(Response::Alerts { configured, alerts }) => {
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&alerts)?);
                return Ok(ExitCode::SUCCESS);
            }
            if !configured {
                eprintln!("no `alerts:` in the applied bow.yaml: no rules are evaluated");
            } else if alerts.is_empty() {
                eprintln!("no alert is firing");
            }
            let now = bow_agent::now_ms();
            for alert in &alerts {
                let minutes = (now - alert.since_ms).max(0) / 60_000;
                let service = if alert.service.is_empty() {
                    "-"
                } else {
                    &alert.service
                };
                println!(
                    "{:<22} {:<12} {:<9} {:>4}m  {}",
                    alert.name, service, alert.severity, minutes, alert.summary
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Response::Error { message }) => bail!("{message}"),
        Some(other) => bail!("unexpected answer from the agent: {other:?}"),
        None => Err(session::no_agent(&state_dir)),
    }
}
