//! A health `exec` check of a container: `/bin/sh -c CHECK` inside it through the engine's
//! exec API (never on the host, where the image's programs and files are not).

use bollard::Docker;
use futures_util::StreamExt;

use crate::engine::message;

/// Runs `command` in the container with `sh -c`: `Ok` on exit 0, else its code and the
/// start of its output.
pub(crate) async fn run(
    docker: &Docker,
    container_id: &str,
    command: &str,
) -> std::result::Result<(), String> {
    let exec = docker
        .create_exec(
            container_id,
            bollard::exec::CreateExecOptions {
                cmd: Some(vec![
                    "/bin/sh".to_string(),
                    "-c".to_string(),
                    command.to_string(),
                ]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("exec {command:?}: {}", message(&e)))?;
    let started = docker
        .start_exec(&exec.id, None)
        .await
        .map_err(|e| format!("exec {command:?}: {}", message(&e)))?;
    let mut output = Vec::new();
    if let bollard::exec::StartExecResults::Attached {
        output: mut stream, ..
    } = started
    {
        while let Some(Ok(chunk)) = stream.next().await {
            if output.len() < 4096 {
                output.extend_from_slice(&chunk.into_bytes());
            }
        }
    }
    let inspect = docker
        .inspect_exec(&exec.id)
        .await
        .map_err(|e| format!("exec {command:?}: {}", message(&e)))?;
    match inspect.exit_code {
        Some(0) => Ok(()),
        code => {
            let text = String::from_utf8_lossy(&output);
            let text = text.trim();
            let code = code.map_or("unknown".to_string(), |c| c.to_string());
            if text.is_empty() {
                Err(format!("exec {command:?} exited with code {code}"))
            } else {
                Err(format!("exec {command:?} exited with code {code}: {text}"))
            }
        }
    }
}

/// What the agent would run on the host for a container's check (it does not: the check
/// runs inside through [`run`]): a command that fails and says so, running nothing of it.
pub(crate) fn not_on_the_host(check: &str) -> std::process::Command {
    let mut command = std::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg("echo \"$1: a container's exec check runs inside it, not on the host\" >&2; exit 1")
        .arg("sh")
        .arg(check);
    command
}
