//! `bow exec SERVICE [--instance N] -- CMD ARGS…`: a command run the way a running instance
//! of the service runs. A process instance's: its unix user, its dir, its environment (read
//! from the instance itself: PORT, BOW_*, the discovery variables, `${secret:…}` values,
//! BOW_SECRETS_DIR), inside its mount namespace and confined by its sandbox (the driver's
//! `check_command`, what its `exec` health checks use). A container's: inside the container
//! through the engine, as its user. Stdin, stdout and stderr are the caller's; the exit code
//! is the command's.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use bow_driver::Handle;

use crate::cli::StackArgs;
use crate::session::Session;

pub fn run(
    args: &StackArgs,
    service: &str,
    instance: Option<u32>,
    command: &[String],
) -> Result<ExitCode> {
    let session = Session::load(args)?;
    let Some(definition) = session.spec.services.get(service) else {
        let names: Vec<&str> = session.spec.services.keys().map(String::as_str).collect();
        bail!(
            "no service `{service}` in {}: services are {}",
            session.file.display(),
            names.join(", ")
        );
    };
    let handle = running_instance(&session, service, instance)?;
    let line = command
        .iter()
        .map(|word| shell_word(word))
        .collect::<Vec<_>>()
        .join(" ");
    if handle.kind() == "container" {
        return in_container(&handle, command);
    }
    let drivers = bow_agent::Drivers::local(
        bow_driver::ShimCommand::current_exe(),
        &session.state_dir,
        &session.spec.project,
        &session.spec.environment,
    );
    let driver = drivers.for_handle(&handle);
    if !driver.is_running(&handle) {
        bail!("{} is not running", handle.instance_id());
    }
    let dir = definition.dir.clone().unwrap_or_else(|| "/".to_string());
    let mut child = driver.check_command(&handle, &line, Path::new(&dir));
    child.env_clear();
    if let Some(pid) = handle.pid() {
        for (name, value) in instance_environment(pid)? {
            child.env(name, value);
        }
    }
    let status = child
        .status()
        .with_context(|| format!("cannot run {line:?} as {}", handle.instance_id()))?;
    Ok(ExitCode::from(exit_code(status)))
}

/// The handle of a running instance of `service` (`index`, or the lowest-numbered one),
/// read from the state dir's records.
fn running_instance(session: &Session, service: &str, index: Option<u32>) -> Result<Handle> {
    crate::session::check_readable(&session.state_dir.join(bow_store::DATABASE_FILE))?;
    let store = bow_store::Store::open_existing(&session.state_dir)
        .with_context(|| format!("cannot read the state in {}", session.state_dir.display()))?
        .ok_or_else(|| anyhow!("nothing runs yet: `bow up` starts the services"))?;
    let mut rows: Vec<_> = store
        .instances()?
        .into_iter()
        .filter(|row| row.service == service && index.is_none_or(|i| row.index == i))
        .collect();
    rows.sort_by_key(|row| row.index);
    let row = rows.into_iter().next().ok_or_else(|| match index {
        Some(i) => anyhow!("{service}.{i} does not run"),
        None => anyhow!("no instance of {service} runs"),
    })?;
    serde_json::from_str(&row.handle_json)
        .with_context(|| format!("the record of {} cannot be read", row.id))
}

/// `/proc/<pid>/environ`: the instance's own environment.
fn instance_environment(pid: i32) -> Result<Vec<(String, String)>> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ"))
        .with_context(|| format!("cannot read the environment of pid {pid} (run as root)"))?;
    Ok(bytes
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let text = std::str::from_utf8(entry).ok()?;
            let (name, value) = text.split_once('=')?;
            Some((name.to_string(), value.to_string()))
        })
        .collect())
}

fn in_container(handle: &Handle, command: &[String]) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let engine = bow_container::Engine::from_env();
    let code = runtime.block_on(bow_container::exec_attached(&engine, handle, command));
    // A read of our stdin may still wait: do not wait for it.
    runtime.shutdown_background();
    let code = code.map_err(|reason| anyhow!(reason))?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code.clamp(0, 255) as u8,
        (None, Some(signal)) => (128 + signal).clamp(0, 255) as u8,
        _ => 1,
    }
}

/// A word as `sh` reads it back.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}
