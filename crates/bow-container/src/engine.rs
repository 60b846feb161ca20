//! The connection to the container engine: `DOCKER_HOST` (a `unix://` socket) or the default
//! socket, with the API version negotiated down to what the engine speaks (Debian's Docker
//! 20.10 speaks 1.41; Podman's compatible service speaks the same API).

use bollard::{API_DEFAULT_VERSION, Docker};
use tokio::sync::OnceCell;

/// The socket tried when `DOCKER_HOST` is not set.
pub const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";
/// Seconds an engine request may take to answer (streams such as logs and waits run on).
const REQUEST_TIMEOUT_SECONDS: u64 = 120;

/// A lazily connected engine: the first use connects, a failed connection is tried again on
/// the next use (the engine may start after bow).
pub struct Engine {
    socket: String,
    docker: OnceCell<Docker>,
}

impl Engine {
    /// The engine `DOCKER_HOST` names, or the default socket.
    pub fn from_env() -> Engine {
        let socket = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SOCKET.to_string());
        Engine::new(&socket)
    }

    pub fn new(socket: &str) -> Engine {
        Engine {
            socket: socket.to_string(),
            docker: OnceCell::new(),
        }
    }

    /// Where the engine is looked for (`unix:///var/run/docker.sock`).
    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// The connected client; the error names the socket tried and what to do.
    pub async fn docker(&self) -> Result<&Docker, String> {
        self.docker
            .get_or_try_init(|| async {
                let Some(path) = self.socket.strip_prefix("unix://") else {
                    return Err(format!(
                        "DOCKER_HOST={} is not supported: bow talks to the engine over a unix socket (unix:///path)",
                        self.socket
                    ));
                };
                let fail = |error: &dyn std::fmt::Display| {
                    format!(
                        "no container engine at {}: {error}; start dockerd (or podman's API service) or set DOCKER_HOST",
                        self.socket
                    )
                };
                let docker =
                    Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECONDS, API_DEFAULT_VERSION)
                        .map_err(|e| fail(&e))?;
                docker.negotiate_version().await.map_err(|e| fail(&e))
            })
            .await
    }
}

/// The engine's message for an error (`No such container: …` rather than the whole debug form).
pub fn message(error: &bollard::errors::Error) -> String {
    match error {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Whether the engine said the object does not exist.
pub fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}
