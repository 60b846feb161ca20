//! The admin listener (`admin:` in bow.yaml): `/metrics` for Prometheus over HTTP/1.1, read
//! only. With `token_secret`, every request must carry `Authorization: Bearer <token>` (the
//! secret's value, compared in constant time); the file's validation refuses an address off
//! loopback without one. Started, restarted (address or token changed) and stopped with the
//! applied spec, like the edge.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bow_reconcile::EventKind;
use bow_spec::Spec;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::agent::Agent;

/// Connections the admin listener serves at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The content types of the two text formats.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The running listener and what it was started with.
pub(crate) struct AdminRuntime {
    settings: bow_spec::Admin,
    token: Option<Vec<u8>>,
    task: JoinHandle<()>,
}

/// What every request of one listener shares.
struct Shared {
    agent: std::sync::Weak<Agent>,
    token: Option<Vec<u8>>,
    scrapes: AtomicU64,
}

impl Agent {
    /// Starts, restarts (address or token changed) or stops the admin listener to match
    /// `spec`.
    pub(crate) async fn ensure_admin(self: &Arc<Self>, spec: &Spec) {
        let wanted = spec.admin.clone();
        let token = match wanted.as_ref().and_then(|a| a.token_secret.as_deref()) {
            None => Ok(None),
            Some(name) => crate::secrets::reveal(self, name)
                .map(|value| Some(trim_newline(value)))
                .map_err(|reason| format!("admin.token_secret: {reason}")),
        };
        let mut guard = self.admin.lock().await;
        if let (Some(running), Some(wanted), Ok(token)) = (guard.as_ref(), &wanted, &token)
            && running.settings == *wanted
            && running.token == *token
        {
            return;
        }
        if let Some(old) = guard.take() {
            old.task.abort();
            let _ = old.task.await;
            self.emit(
                "",
                "",
                EventKind::AdminStopped,
                &format!("{} (admin settings changed)", old.settings.listen),
            );
        }
        let Some(settings) = wanted else { return };
        let token = match token {
            Ok(token) => token,
            Err(reason) => {
                self.emit("", "", EventKind::AdminFailed, &reason);
                return;
            }
        };
        match TcpListener::bind(settings.listen).await {
            Ok(listener) => {
                let address = listener.local_addr().unwrap_or(settings.listen);
                let shared = Arc::new(Shared {
                    agent: Arc::downgrade(self),
                    token: token.clone(),
                    scrapes: AtomicU64::new(0),
                });
                let task = tokio::spawn(serve(listener, shared));
                let how = if token.is_some() {
                    "a bearer token required"
                } else {
                    "no token"
                };
                self.emit(
                    "",
                    "",
                    EventKind::AdminStarted,
                    &format!("http://{address}/metrics ({how})"),
                );
                *guard = Some(AdminRuntime {
                    settings,
                    token,
                    task,
                });
            }
            Err(error) => {
                self.emit(
                    "",
                    "",
                    EventKind::AdminFailed,
                    &format!("cannot listen on {}: {error}", settings.listen),
                );
            }
        }
    }

    /// Stops the admin listener (`bow down`).
    pub(crate) async fn stop_admin(&self) {
        if let Some(old) = self.admin.lock().await.take() {
            old.task.abort();
            let _ = old.task.await;
        }
    }
}

/// A secret's value without the newline `bow secret set` from a file or a terminal keeps.
fn trim_newline(mut value: Vec<u8>) -> Vec<u8> {
    while value.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        value.pop();
    }
    value
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of descriptors, say: try again shortly rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&shared, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Whether `request` carries the listener's token (always, when it has none).
fn authorized(shared: &Shared, request: &Request<Incoming>) -> bool {
    let Some(token) = &shared.token else {
        return true;
    };
    let Some(given) = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    constant_time_eq(given, token)
}

/// Equal bytes, in a time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn answer(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if !authorized(shared, &request) {
        let mut response = plain(
            StatusCode::UNAUTHORIZED,
            "401 this admin listener needs `Authorization: Bearer <token>` (the value of admin.token_secret)",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"bow\""),
        );
        return response;
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "405 the admin listener is read-only",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let Some(agent) = shared.agent.upgrade() else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "503 the agent is stopping");
    };
    match request.uri().path() {
        "/metrics" => {
            let scrapes = shared.scrapes.fetch_add(1, Ordering::Relaxed) + 1;
            let openmetrics = request.headers().get_all(header::ACCEPT).iter().any(|v| {
                v.as_bytes()
                    .windows(20)
                    .any(|w| w == b"application/openmetr")
            });
            let text = crate::metrics::Scrape::gather(&agent, scrapes)
                .await
                .encode(openmetrics);
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(if openmetrics {
                    OPENMETRICS
                } else {
                    PROMETHEUS_TEXT
                }),
            );
            response
        }
        "/" => plain(
            StatusCode::OK,
            &format!(
                "bow admin: project {} ({})\n/metrics  Prometheus metrics (docs/metrics.md)",
                agent.project, agent.environment
            ),
        ),
        path => plain(
            StatusCode::NOT_FOUND,
            &format!("404 no {path} here; see / for what this listener serves"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert_eq!(trim_newline(b"tok\n".to_vec()), b"tok");
    }
}
