//! Health probes: http (GET, 2xx/3xx healthy), tcp (connect), exec (exit 0), each bounded by
//! the check's timeout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use bow_spec::{Check, TcpTarget};

/// Who runs an exec probe and where.
pub struct ExecContext<'a> {
    pub dir: &'a Path,
    pub env: &'a BTreeMap<String, String>,
    /// `sh -c CHECK` in `dir` as the instance runs (its driver's `check_command`: its user,
    /// its sandbox).
    pub command: &'a (dyn Fn(&str, &Path) -> std::process::Command + Send + Sync),
    /// Runs the command inside the instance instead (a container: through the engine).
    pub inside: Option<(Arc<dyn bow_driver::Driver>, bow_driver::Handle)>,
}

/// Runs one probe against an instance listening on `target` (127.0.0.1 and its port for a
/// process). `Err` says why it failed.
pub async fn probe(
    check: &Check,
    target: SocketAddr,
    timeout: Duration,
    exec: &ExecContext<'_>,
) -> Result<(), String> {
    if let (Check::Exec(command), Some((driver, handle))) = (check, &exec.inside)
        && let Some(run) = driver.exec_check(handle, command, timeout)
    {
        return run.await;
    }
    match tokio::time::timeout(timeout, probe_inner(check, target, exec)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer within {}",
            bow_spec::units::Duration(timeout)
        )),
    }
}

async fn probe_inner(
    check: &Check,
    target: SocketAddr,
    exec: &ExecContext<'_>,
) -> Result<(), String> {
    match check {
        Check::Http(path) => http(target, path).await,
        Check::Tcp(tcp) => {
            let target = match tcp {
                TcpTarget::InstancePort(_) => target,
                TcpTarget::Port(port) => SocketAddr::new(target.ip(), *port),
            };
            TcpStream::connect(target)
                .await
                .map(drop)
                .map_err(|e| format!("tcp {target}: {e}"))
        }
        Check::Exec(command) => {
            let mut child = tokio::process::Command::from((exec.command)(command, exec.dir));
            child
                .env_clear()
                .envs(exec.env)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            let output = child
                .output()
                .await
                .map_err(|e| format!("exec {command:?}: {e}"))?;
            if output.status.success() {
                Ok(())
            } else {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let last = stderr.lines().last().unwrap_or_default();
                Err(format!("exec {command:?}: {} {last}", output.status)
                    .trim_end()
                    .to_string())
            }
        }
    }
}

async fn http(target: SocketAddr, path: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("GET http://{target}{path}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: bow-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("GET http://{target}{path}: {e}"))?;
    let mut head = Vec::with_capacity(64);
    let mut buffer = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let read = stream
            .read(&mut buffer)
            .await
            .map_err(|e| format!("GET http://{target}{path}: {e}"))?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let line = String::from_utf8_lossy(&head);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("GET http://{target}{path}: not an HTTP response"))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("GET http://{target}{path}: status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve_once(status: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buffer = [0u8; 512];
                let _ = socket.read(&mut buffer).await;
                let _ = socket
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        port
    }

    fn shell(check: &str, dir: &Path) -> std::process::Command {
        let mut command = std::process::Command::new("/bin/sh");
        command.arg("-c").arg(check).current_dir(dir);
        command
    }

    fn context() -> (std::path::PathBuf, BTreeMap<String, String>) {
        (
            std::env::temp_dir(),
            BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]),
        )
    }

    #[tokio::test]
    async fn http_classifies_status_codes() {
        let (dir, env) = context();
        let exec = ExecContext {
            dir: &dir,
            env: &env,
            command: &shell,
            inside: None,
        };
        let timeout = Duration::from_secs(2);
        let ok = serve_once("200 OK").await;
        assert!(
            probe(&Check::Http("/healthz".into()), ok, timeout, &exec)
                .await
                .is_ok()
        );
        let redirect = serve_once("302 Found").await;
        assert!(
            probe(&Check::Http("/".into()), redirect, timeout, &exec)
                .await
                .is_ok()
        );
        let bad = serve_once("503 Service Unavailable").await;
        let error = probe(&Check::Http("/healthz".into()), bad, timeout, &exec)
            .await
            .unwrap_err();
        assert!(error.contains("status 503"), "{error}");
    }

    #[tokio::test]
    async fn tcp_and_exec_probes() {
        let (dir, env) = context();
        let exec = ExecContext {
            dir: &dir,
            env: &env,
            command: &shell,
            inside: None,
        };
        let timeout = Duration::from_secs(2);
        let port = serve_once("200 OK").await;
        assert!(
            probe(
                &Check::Tcp(TcpTarget::InstancePort(true)),
                port,
                timeout,
                &exec
            )
            .await
            .is_ok()
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(
            probe(
                &Check::Tcp(TcpTarget::InstancePort(true)),
                closed,
                timeout,
                &exec
            )
            .await
            .is_err()
        );
        assert!(
            probe(&Check::Exec("true".into()), port, timeout, &exec)
                .await
                .is_ok()
        );
        assert!(
            probe(&Check::Exec("exit 3".into()), port, timeout, &exec)
                .await
                .is_err()
        );
        let slow = probe(
            &Check::Exec("sleep 5".into()),
            port,
            Duration::from_millis(100),
            &exec,
        )
        .await
        .unwrap_err();
        assert!(slow.contains("no answer within 100ms"), "{slow}");
    }
}
