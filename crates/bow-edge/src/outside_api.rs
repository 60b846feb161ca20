//! Outside APIs (`proxy:` services): the stack's services call a local address over plain
//! HTTP, and this listener forwards each request to the outside API's URL over TLS, with
//! headers the services never hold (an API key) put on the way.
//!
//! - The outside API's certificate is verified against the system's trust store
//!   ([`trusted_roots`]: `SSL_CERT_FILE` when set, the usual convention, else Debian's
//!   bundle); a refused certificate is a 502 to the caller and one report to `on_failure`.
//! - A caller's own headers of the injected names are dropped first; hop-by-hop headers
//!   (and those `Connection` names) go no further in either direction; `Host` is the outside
//!   API's.
//! - An injected value is never logged and never returned: a response header that carries
//!   a secret injected value is dropped. (A body that echoes it is the API's to avoid.)
//! - Connections to the API are kept alive and reused (hyper's pool); this path is apart
//!   from the edge's own proxy, which routes without outside APIs pay nothing for it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{EdgeError, error_chain as reasons};

/// Where Debian keeps the trusted roots.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// How often one kind of failure is reported to `on_failure` at most.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// One header put on every request.
#[derive(Clone)]
pub struct InjectedHeader {
    pub name: HeaderName,
    pub value: HeaderValue,
    /// Whether the value holds a secret: then it is scrubbed from responses too.
    pub secret: bool,
}

impl std::fmt::Debug for InjectedHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = if self.secret {
            "<secret>"
        } else {
            self.value.to_str().unwrap_or("<bytes>")
        };
        write!(f, "{}: {value}", self.name)
    }
}

/// Reports a failure to reach the outside API (at most once a minute per kind).
pub type FailureReport = Arc<dyn Fn(&str) + Send + Sync>;

/// Everything [`OutsideApi::start`] needs.
#[derive(Clone)]
pub struct OutsideApiConfig {
    /// Where the stack's services call it (its internal address; the containers' bridge).
    pub addrs: Vec<SocketAddr>,
    /// The service's name, in error bodies and reports.
    pub service: String,
    /// `https://host[:port][/base]`.
    pub to: String,
    pub inject_headers: Vec<InjectedHeader>,
    /// The roots the API's certificate must chain to.
    pub roots: Arc<rustls::RootCertStore>,
    pub connect_timeout: Duration,
    /// How long the API may take to send its response head (then 504).
    pub timeout: Duration,
    pub on_failure: FailureReport,
}

impl std::fmt::Debug for OutsideApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutsideApiConfig")
            .field("addrs", &self.addrs)
            .field("service", &self.service)
            .field("to", &self.to)
            .field("inject_headers", &self.inject_headers)
            .finish_non_exhaustive()
    }
}

/// The system's trusted roots: the PEM file `SSL_CERT_FILE` names, else Debian's bundle.
pub fn trusted_roots() -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::pem::PemObject;
    let file = std::env::var_os("SSL_CERT_FILE")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(SYSTEM_ROOTS), PathBuf::from);
    let mut roots = rustls::RootCertStore::empty();
    let certificates = rustls_pki_types::CertificateDer::pem_file_iter(&file)
        .map_err(|e| format!("cannot read the trusted roots in {}: {e}", file.display()))?;
    for certificate in certificates.flatten() {
        let _ = roots.add(certificate);
    }
    if roots.is_empty() {
        return Err(format!("{} holds no certificate", file.display()));
    }
    Ok(roots)
}

type OutBody = Either<Incoming, Full<Bytes>>;

struct State {
    service: String,
    /// `scheme://authority` and the base path without a trailing `/`.
    origin: String,
    base_path: String,
    authority: String,
    inject: Vec<InjectedHeader>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Incoming>,
    timeout: Duration,
    on_failure: FailureReport,
    reported: Mutex<HashMap<String, Instant>>,
}

/// A running outside-API listener.
pub struct OutsideApi {
    accepting: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl OutsideApi {
    /// Binds every address and starts serving.
    pub async fn start(config: OutsideApiConfig) -> Result<OutsideApi, EdgeError> {
        let uri: Uri = config
            .to
            .parse()
            .map_err(|e| EdgeError::InvalidConfig(format!("{}: {e}", config.to)))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(EdgeError::InvalidConfig(format!(
                "{} is not an absolute URL",
                config.to
            )));
        };
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| EdgeError::InvalidConfig(format!("TLS: {e}")))?
            .with_root_certificates(config.roots.clone())
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build(connector);
        let state = Arc::new(State {
            service: config.service.clone(),
            origin: format!("{scheme}://{authority}"),
            base_path: uri.path().trim_end_matches('/').to_string(),
            authority: authority.to_string(),
            inject: config.inject_headers.clone(),
            client,
            timeout: config.timeout,
            on_failure: config.on_failure.clone(),
            reported: Mutex::new(HashMap::new()),
        });
        let mut listeners = Vec::new();
        for addr in &config.addrs {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| EdgeError::Bind {
                    addr: *addr,
                    source,
                })?;
            listeners.push(listener);
        }
        let (stop, stopped) = watch::channel(false);
        let accepting = listeners
            .into_iter()
            .map(|listener| tokio::spawn(accept(listener, state.clone(), stopped.clone())))
            .collect();
        Ok(OutsideApi { accepting, stop })
    }

    /// Stops listening (the addresses are free when this returns) and closes every
    /// connection once its request is answered (a new key must not keep being served on old
    /// keep-alive connections).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.accepting) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for OutsideApi {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.accepting {
            task.abort();
        }
    }
}

async fn accept(listener: TcpListener, state: Arc<State>, stopped: watch::Receiver<bool>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(forward(&state, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(75))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = async { drop(stopped.wait_for(|stop| *stop).await) } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

/// Headers that describe one hop: never passed on.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn drop_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

async fn forward(state: &State, request: Request<Incoming>) -> Response<OutBody> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = match format!("{}{}{path}", state.origin, state.base_path).parse() {
        Ok(uri) => uri,
        Err(_) => {
            return answer(
                state,
                StatusCode::BAD_REQUEST,
                "the request's path is not valid",
            );
        }
    };
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    drop_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    for injected in &state.inject {
        parts.headers.remove(&injected.name);
    }
    for injected in &state.inject {
        parts
            .headers
            .append(injected.name.clone(), injected.value.clone());
    }
    let request = Request::from_parts(parts, body);
    let response = match tokio::time::timeout(state.timeout, state.client.request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            let reason = reasons(&error);
            report(state, &reason);
            return answer(
                state,
                StatusCode::BAD_GATEWAY,
                &format!("the outside API at {} failed: {reason}", state.authority),
            );
        }
        Err(_) => {
            let reason = format!("no answer within {:?}", state.timeout);
            report(state, &reason);
            return answer(
                state,
                StatusCode::GATEWAY_TIMEOUT,
                &format!("the outside API at {}: {reason}", state.authority),
            );
        }
    };
    let (mut parts, body) = response.into_parts();
    drop_hop_by_hop(&mut parts.headers);
    scrub(&mut parts.headers, &state.inject);
    Response::from_parts(parts, Either::Left(body))
}

/// Drops every header whose value carries a secret injected value.
fn scrub(headers: &mut HeaderMap, inject: &[InjectedHeader]) {
    let secrets: Vec<&[u8]> = inject
        .iter()
        .filter(|h| h.secret && !h.value.is_empty())
        .map(|h| h.value.as_bytes())
        .collect();
    if secrets.is_empty() {
        return;
    }
    let leaking: Vec<HeaderName> = headers
        .iter()
        .filter(|(_, value)| {
            let value = value.as_bytes();
            secrets
                .iter()
                .any(|secret| value.windows(secret.len()).any(|w| w == *secret))
        })
        .map(|(name, _)| name.clone())
        .collect();
    for name in leaking {
        headers.remove(name);
    }
}

fn report(state: &State, reason: &str) {
    let now = Instant::now();
    {
        let mut reported = state.reported.lock().unwrap_or_else(|p| p.into_inner());
        if reported
            .get(reason)
            .is_some_and(|at| now.duration_since(*at) < REPORT_EVERY)
        {
            return;
        }
        if reported.len() > 64 {
            reported.clear();
        }
        reported.insert(reason.to_string(), now);
    }
    (state.on_failure)(&format!(
        "outside API {} ({}): {reason}",
        state.service, state.authority
    ));
}

fn answer(state: &State, status: StatusCode, message: &str) -> Response<OutBody> {
    let body = format!("bow: {}: {message}\n", state.service);
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        drop_hop_by_hop(&mut headers);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn response_headers_carrying_a_secret_value_are_dropped() {
        let inject = [
            InjectedHeader {
                name: HeaderName::from_static("x-api-key"),
                value: HeaderValue::from_static("k3y-value"),
                secret: true,
            },
            InjectedHeader {
                name: HeaderName::from_static("x-client"),
                value: HeaderValue::from_static("bow"),
                secret: false,
            },
        ];
        let mut headers = HeaderMap::new();
        headers.insert("x-echo", HeaderValue::from_static("got k3y-value here"));
        headers.insert("x-client", HeaderValue::from_static("bow"));
        headers.insert("x-other", HeaderValue::from_static("k3y"));
        scrub(&mut headers, &inject);
        assert!(headers.get("x-echo").is_none());
        assert!(headers.get("x-client").is_some() && headers.get("x-other").is_some());
        assert_eq!(
            format!("{:?}", inject[0]),
            "x-api-key: <secret>",
            "Debug never shows a secret"
        );
    }
}
