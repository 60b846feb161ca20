//! A blocking client of the agent socket, for the CLI.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::api::{Request, Response, SOCKET_FILE};
use crate::error::AgentError;

/// Sends one request and reads its response. `Ok(None)` when no agent listens.
pub fn call(
    state_dir: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Option<Response>, AgentError> {
    let path = state_dir.join(SOCKET_FILE);
    let mut stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(source) => {
            return Err(AgentError::Io {
                what: format!("cannot connect to {}", path.display()),
                source,
            });
        }
    };
    let io = |what: &str| {
        let what = what.to_string();
        move |source| AgentError::Io { what, source }
    };
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io("socket timeout"))?;
    let mut line =
        serde_json::to_string(request).map_err(|e| AgentError::Protocol(e.to_string()))?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(io("cannot send to the agent"))?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(io("no answer from the agent"))?;
    if reply.is_empty() {
        return Err(AgentError::Protocol(
            "the agent closed the connection without answering".into(),
        ));
    }
    let response: Response =
        serde_json::from_str(&reply).map_err(|e| AgentError::Protocol(e.to_string()))?;
    Ok(Some(response))
}
