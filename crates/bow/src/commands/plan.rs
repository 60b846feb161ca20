//! `bow plan`: what apply would change, against the state recorded in the state dir.
//! Exit 0: nothing to do; 2: changes; 1: error.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::{Output, StackArgs};

pub fn run(args: &StackArgs, output: Output) -> Result<ExitCode> {
    let mut session = crate::session::Session::load(args)?;
    crate::secret_store::attach_digests(&mut session)?;
    let recorded = recorded_spec(&session.state_dir)?;
    let plan = bow_plan::plan(&session.spec, recorded.as_ref());
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
        Output::Text => {
            print!("{}", render(&plan, &session.file));
            if let Some(note) = engine_note(&session.spec) {
                println!("\n{note}");
            }
        }
    }
    Ok(if plan.has_changes() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// When the spec has container services and no container engine answers: which services
/// cannot start and the socket tried. (Process services run regardless.)
pub fn engine_note(spec: &bow_spec::Spec) -> Option<String> {
    let containers: Vec<&str> = spec
        .services
        .iter()
        .filter(|(_, s)| matches!(s.workload, bow_spec::Workload::Container(_)))
        .map(|(name, _)| name.as_str())
        .collect();
    if containers.is_empty() {
        return None;
    }
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| bow_container::engine::DEFAULT_SOCKET.to_string());
    let reason = match engine_answers(&socket) {
        Ok(()) => return None,
        Err(reason) => reason,
    };
    Some(format!(
        "warning: no container engine at {socket} ({reason}): {} cannot start until one runs; start dockerd (or podman's API service) or set DOCKER_HOST",
        containers.join(", ")
    ))
}

/// `GET /_ping` on the engine's unix socket.
fn engine_answers(socket: &str) -> std::result::Result<(), String> {
    use std::io::{Read, Write};
    let path = socket
        .strip_prefix("unix://")
        .ok_or_else(|| "only unix:// sockets are supported".to_string())?;
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| e.to_string())?;
    let timeout = Some(std::time::Duration::from_secs(3));
    stream
        .set_read_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = stream.take(4096).read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    if text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(format!(
            "it answered {:?}",
            text.lines().next().unwrap_or_default()
        ))
    }
}

/// The last applied spec in `state_dir` (read-only), if any.
pub fn recorded_spec(state_dir: &Path) -> Result<Option<bow_spec::Spec>> {
    crate::session::check_readable(&state_dir.join(bow_store::DATABASE_FILE))?;
    Ok(
        match bow_store::Store::open_existing(state_dir)
            .with_context(|| format!("cannot read the recorded state in {}", state_dir.display()))?
        {
            Some(store) => store.latest_revision()?.map(|revision| revision.spec),
            None => None,
        },
    )
}

/// The plan as text. Paths are compared absolute; people read them relative to the file.
pub fn render(plan: &bow_plan::Plan, file: &Path) -> String {
    let base = file
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    plan.to_string()
        .replace(&format!("\"{base}/"), "\"./")
        .replace(&format!("\"{base}\""), "\".\"")
}
