//! The admin listener (`admin:` in bow.yaml), read only over HTTP/1.1: `/metrics` for
//! Prometheus, the dashboard at `/` and its live updates at `/events` (`dashboard.rs`). With
//! `token_secret`, every request must carry the secret's value (compared in constant time) as
//! `Authorization: Bearer <token>`, or as the password of HTTP Basic (a browser asks for it);
//! the file's validation refuses an address off loopback without one. Off loopback it serves
//! HTTPS only, with a certificate from bow's local CA (`<state-dir>/ca/ca.pem`) for the name
//! the client asked for (SNI) or else the address it connected to. Started, restarted
//! (address or token changed) and stopped with the applied spec, like the edge.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bow_reconcile::EventKind;
use bow_spec::Spec;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
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
    sampler: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl AdminRuntime {
    /// Stops accepting, sampling and every live page's stream.
    async fn stop(self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.sampler.abort();
        self.task.abort();
        let _ = self.task.await;
    }
}

/// What every request of one listener shares.
struct Shared {
    agent: std::sync::Weak<Agent>,
    token: Option<Vec<u8>>,
    scrapes: AtomicU64,
    /// The dashboard's last hour.
    history: std::sync::Mutex<crate::dashboard_history::History>,
    /// Set when the listener stops: live pages' streams end.
    closed: std::sync::atomic::AtomicBool,
}

type Body = BoxBody<Bytes, std::convert::Infallible>;

/// How often the dashboard's live page gets the system again.
const LIVE_EVERY: Duration = Duration::from_secs(2);

/// A server-sent event stream: what the task behind `receiver` sends, until it stops.
struct EventStream {
    receiver: tokio::sync::mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for EventStream {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.receiver
            .poll_recv(context)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
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
            let listen = old.settings.listen;
            old.stop().await;
            self.emit(
                "",
                "",
                EventKind::AdminStopped,
                &format!("{listen} (admin settings changed)"),
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
                    history: Default::default(),
                    closed: Default::default(),
                });
                // Off loopback, the token and the series cross a network: TLS only.
                let tls = if settings.listen.ip().is_loopback() {
                    None
                } else {
                    match bow_edge::LocalCa::open_or_create(&crate::edge::ca_dir(&self.state_dir)) {
                        Ok(ca) => Some(Arc::new(ca)),
                        Err(error) => {
                            self.emit(
                                "",
                                "",
                                EventKind::AdminFailed,
                                &format!("the local CA for the admin listener's TLS: {error}"),
                            );
                            return;
                        }
                    }
                };
                let scheme = if tls.is_some() { "https" } else { "http" };
                let sampler = tokio::spawn(sample_forever(shared.clone()));
                let task = tokio::spawn(serve(listener, shared.clone(), tls));
                let how = if token.is_some() {
                    "a bearer token required"
                } else {
                    "no token"
                };
                self.emit(
                    "",
                    "",
                    EventKind::AdminStarted,
                    &format!("{scheme}://{address}/ (dashboard) and /metrics ({how})"),
                );
                *guard = Some(AdminRuntime {
                    settings,
                    token,
                    task,
                    sampler,
                    shared,
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
            old.stop().await;
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

/// Samples the system into the dashboard's history every ten seconds.
async fn sample_forever(shared: Arc<Shared>) {
    loop {
        let Some(agent) = shared.agent.upgrade() else {
            return;
        };
        let kept = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            crate::dashboard::sample(&agent, &kept.history);
        })
        .await;
        tokio::time::sleep(crate::dashboard_history::SAMPLE_EVERY).await;
    }
}

/// The admin listener's certificate: the local CA's leaf for the SNI name, else for the
/// address the client connected to (Prometheus scrapes `https://10.0.0.5:9100`).
#[derive(Debug)]
struct AdminCertificate {
    ca: Arc<bow_edge::LocalCa>,
    address: String,
}

impl rustls::server::ResolvesServerCert for AdminCertificate {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.ca
            .leaf(Some(hello.server_name().unwrap_or(&self.address)))
            .ok()
    }
}

/// A TLS server for one connection that arrived at `local`.
fn tls_config(ca: &Arc<bow_edge::LocalCa>, local: std::net::SocketAddr) -> rustls::ServerConfig {
    let resolver = AdminCertificate {
        ca: ca.clone(),
        address: local.ip().to_canonical().to_string(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(bow_edge::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("the provider's defaults are valid")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, tls: Option<Arc<bow_edge::LocalCa>>) {
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
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&shared, request).await) }
            });
            let builder = {
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT);
                builder
            };
            match (tls, stream.local_addr()) {
                (None, _) => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                (Some(ca), Ok(local)) => {
                    let acceptor =
                        tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&ca, local)));
                    let handshake =
                        tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await;
                    if let Ok(Ok(stream)) = handshake {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
                (Some(_), Err(_)) => {}
            }
            drop(permit);
        });
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(full(format!("{text}\n")));
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
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return false;
    };
    if let Some(given) = value.as_bytes().strip_prefix(b"Bearer ") {
        return constant_time_eq(given, token);
    }
    // A browser's HTTP Basic: any user name, the token as the password.
    value
        .as_bytes()
        .strip_prefix(b"Basic ")
        .and_then(|encoded| base64_decode(encoded.trim_ascii()))
        .and_then(|pair| {
            let colon = pair.iter().position(|b| *b == b':')?;
            Some(constant_time_eq(&pair[colon + 1..], token))
        })
        .unwrap_or(false)
}

/// Standard base64 (with or without padding); `None` for anything else.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let text = text
        .strip_suffix(b"==")
        .or_else(|| text.strip_suffix(b"="))
        .unwrap_or(text);
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut bits = 0u32;
        for (index, c) in chunk.iter().enumerate() {
            bits |= value(*c)? << (18 - 6 * index);
        }
        let bytes = bits.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

/// Equal bytes, in a time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn answer(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    // A git host's push notification: authenticated by its signature, not the token.
    if request.uri().path() == "/hooks/git" {
        return git_hook(shared, request).await;
    }
    if !authorized(shared, &request) {
        let mut response = plain(
            StatusCode::UNAUTHORIZED,
            "401 this admin listener needs `Authorization: Bearer <token>` (the value of admin.token_secret)",
        );
        for challenge in [
            "Bearer realm=\"bow\"",
            "Basic realm=\"bow\", charset=\"UTF-8\"",
        ] {
            response.headers_mut().append(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(challenge),
            );
        }
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
            let mut response = Response::new(full(text));
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
        "/" => {
            let kept = shared.clone();
            let html =
                tokio::task::spawn_blocking(move || crate::dashboard::page(&agent, &kept.history))
                    .await
                    .unwrap_or_default();
            let mut response = Response::new(full(html));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
        "/events" => {
            let (sender, receiver) = tokio::sync::mpsc::channel(1);
            let kept = shared.clone();
            drop(agent);
            tokio::spawn(async move {
                loop {
                    let agent = kept.agent.upgrade();
                    let (Some(agent), false) = (agent, kept.closed.load(Ordering::Relaxed)) else {
                        return;
                    };
                    let history = kept.clone();
                    let Ok(html) = tokio::task::spawn_blocking(move || {
                        crate::dashboard::fragment(&agent, &history.history)
                    })
                    .await
                    else {
                        return;
                    };
                    let event = Bytes::from(crate::dashboard::event(&html));
                    if sender.send(event).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(LIVE_EVERY).await;
                }
            });
            let mut response = Response::new(EventStream { receiver }.boxed());
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/event-stream"),
            );
            headers.insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            response
        }
        path => plain(
            StatusCode::NOT_FOUND,
            &format!("404 no {path} here; see / for what this listener serves"),
        ),
    }
}

/// `POST /hooks/git` (crate::hooks): the body read up to its limit, then the signature checked.
async fn git_hook(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let Some(agent) = shared.agent.upgrade() else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "503 the agent is stopping");
    };
    let post = request.method() == Method::POST;
    let (parts, body) = request.into_parts();
    let body = if post {
        http_body_util::Limited::new(body, crate::hooks::MAX_BODY)
            .collect()
            .await
            .ok()
            .map(|collected| collected.to_bytes())
    } else {
        Some(Bytes::new())
    };
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let (status, text) = crate::hooks::answer(&agent, post, body.as_deref(), header);
    plain(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &text,
    )
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
        assert_eq!(base64_decode(b"dXNlcjp0b2s=").unwrap(), b"user:tok");
        assert_eq!(base64_decode(b"YWI").unwrap(), b"ab");
        assert_eq!(base64_decode(b"YQ==").unwrap(), b"a");
        assert!(base64_decode(b"a*b=").is_none());
    }
}
