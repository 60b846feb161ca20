//! `exec` health checks inside a container: `/bin/sh -c CHECK` through the engine, its exit
//! code and the start of its output.

use bollard::Docker;
use bow_driver::ContainerHandle;
use futures_util::StreamExt;

use crate::engine::message;

/// Runs `command` in the container; `Err` says how it failed.
pub(crate) async fn exec_in(
    docker: Docker,
    handle: ContainerHandle,
    command: String,
) -> Result<(), String> {
    let exec = docker
        .create_exec(
            &handle.container_id,
            bollard::exec::CreateExecOptions {
                cmd: Some(vec![
                    "/bin/sh".to_string(),
                    "-c".to_string(),
                    command.clone(),
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
