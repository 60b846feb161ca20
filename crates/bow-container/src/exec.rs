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

/// `bow exec` in a container: `command` (an argv) runs inside it as its user, its output on
/// our stdout and stderr, our stdin copied to it; resolves to its exit code.
pub async fn exec_attached(
    engine: &crate::Engine,
    handle: &bow_driver::Handle,
    command: &[String],
) -> Result<i64, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let container = handle
        .as_container()
        .ok_or_else(|| "not a container instance".to_string())?;
    let docker = engine.docker().await?;
    let exec = docker
        .create_exec(
            &container.container_id,
            bollard::exec::CreateExecOptions {
                cmd: Some(command.to_vec()),
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("cannot exec in {}: {}", container.name, message(&e)))?;
    let started = docker
        .start_exec(&exec.id, None)
        .await
        .map_err(|e| format!("cannot exec in {}: {}", container.name, message(&e)))?;
    if let bollard::exec::StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    {
        let copy_in = tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buffer = vec![0u8; 16 * 1024];
            while let Ok(read) = stdin.read(&mut buffer).await {
                if read == 0 || input.write_all(&buffer[..read]).await.is_err() {
                    break;
                }
            }
            let _ = input.shutdown().await;
        });
        let mut stdout = tokio::io::stdout();
        let mut stderr = tokio::io::stderr();
        while let Some(Ok(chunk)) = output.next().await {
            match chunk {
                bollard::container::LogOutput::StdErr { message } => {
                    let _ = stderr.write_all(&message).await;
                }
                other => {
                    let _ = stdout.write_all(&other.into_bytes()).await;
                }
            }
        }
        let _ = stdout.flush().await;
        copy_in.abort();
    }
    let inspect = docker
        .inspect_exec(&exec.id)
        .await
        .map_err(|e| format!("cannot read how the command ended: {}", message(&e)))?;
    Ok(inspect.exit_code.unwrap_or(1))
}
